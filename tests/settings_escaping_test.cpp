// Untrusted text in messages is escaped, so one error stays one line: the settings parser's message for
// a value holding a newline or a terminal escape, and printable() itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>

#include "config/settings.h"
#include "config/printable.h"

namespace gpushim {
namespace {

const char* lookup(const char* name, void* user) {
  auto* environment = static_cast<std::map<std::string, std::string>*>(user);
  auto it = environment->find(name);
  return it == environment->end() ? nullptr : it->second.c_str();
}

TEST(SettingsEscaping, ValueWithANewlineStaysOneLine) {
  std::map<std::string, std::string> environment{{"GPUSHIM_BACKEND", "vmm\ngpushim: GPUSHIM_LIMIT=fake"}};
  Settings parsed = parse_settings(&lookup, &environment);
  ASSERT_EQ(parsed.errors.size(), 1u);
  const std::string& line = parsed.errors[0];
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  EXPECT_NE(line.find("GPUSHIM_BACKEND=vmm\\ngpushim: GPUSHIM_LIMIT=fake is not valid"), std::string::npos) << line;
}

TEST(SettingsEscaping, ControlAndNonAsciiBytesAreEscaped) {
  std::map<std::string, std::string> environment{{"GPUSHIM_LIMIT", "\x1b[2J\r\t\xff"}};
  Settings parsed = parse_settings(&lookup, &environment);
  ASSERT_EQ(parsed.errors.size(), 1u);
  const std::string& line = parsed.errors[0];
  EXPECT_TRUE(std::none_of(line.begin(), line.end(), [](char c) { return (unsigned char)c < 0x20 || (unsigned char)c >= 0x7f; }))
      << line;
  EXPECT_NE(line.find("GPUSHIM_LIMIT=\\x1b[2J\\r\\t\\xff is not valid"), std::string::npos) << line;
}

TEST(Printable, EscapesAndShortens) {
  EXPECT_EQ(printable("plain text/path.trace"), "plain text/path.trace");
  EXPECT_EQ(printable(std::string("a\nb\\c\0d", 7)), "a\\nb\\\\c\\x00d");
  EXPECT_EQ(printable(std::string(300, 'x'), 10), std::string(10, 'x') + "...");
  EXPECT_EQ(printable(std::string(10, 'x'), 10), std::string(10, 'x'));
}

}  // namespace
}  // namespace gpushim
