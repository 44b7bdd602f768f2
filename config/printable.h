// Untrusted text (a setting's value, a path, a name read from a file) made safe to put inside one line
// of a message: control characters, backslashes and bytes outside printable ASCII become escapes
// (\n, \t, \\, \xNN), and very long text is shortened, so one error always stays one readable line.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace gpushim {

// Text longer than this is cut, with "..." after it: a message names the value, it need not hold it.
inline constexpr std::size_t kPrintableMaxChars = 256;

std::string printable(std::string_view text, std::size_t max_chars = kPrintableMaxChars);

}  // namespace gpushim
