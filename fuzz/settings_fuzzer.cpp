// The settings parser on arbitrary environments. The input is a list of entries separated by NUL: the
// first byte of an entry picks a setting (a row of the table), the rest is its value. Checked besides
// "no crash": every problem is one printable line, whatever bytes the value holds.
#include <string>
#include <utility>
#include <vector>

#include "config/settings.h"
#include "fuzz/fuzz_support.h"

using namespace gpushim;

namespace {

using Environment = std::vector<std::pair<std::string, std::string>>;

const char* lookup(const char* name, void* user) {
  const char* found = nullptr;
  for (const auto& [variable, value] : *static_cast<Environment*>(user))
    if (variable == name) found = value.c_str();  // the last one wins, as with setenv
  return found;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  const std::vector<SettingRow>& rows = setting_rows();
  Environment environment;
  std::size_t at = 0;
  while (at < size) {
    std::size_t end = at;
    while (end < size && data[end] != 0) ++end;
    if (end > at) {
      const SettingRow& row = rows[data[at] % rows.size()];
      environment.emplace_back(row.variable, std::string(reinterpret_cast<const char*>(data) + at + 1, end - at - 1));
    }
    at = end + 1;
  }
  Settings parsed = parse_settings(&lookup, &environment);
  for (const std::string& line : parsed.errors)
    for (char c : line)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) fuzz::finding("a settings error is not one printable line", line);
  for (const auto& [variable, value] : environment) setting_value_rejected_by(variable.c_str(), value.c_str());
  std::uint64_t bytes = 0;
  SizeSetting size_setting;
  std::string text(reinterpret_cast<const char*>(data), size);
  parse_size(text.c_str(), &bytes);
  parse_size_or_percent(text.c_str(), &size_setting);
  return 0;
}
