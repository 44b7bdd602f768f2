// diagnostics/log: "gpushim: " + message + "\n" in one write, filtered by GPUSHIM_LOG. ctest runs this
// binary once per level (tests/config.cmake sets GPUSHIM_LOG), and the test checks what that level
// must print, so the real path through settings() is what is tested.
#include "diagnostics/log.h"

#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace gpushim {
namespace {

// Runs `emit` with fd 2 pointing at a temporary file and returns what was written there.
template <typename Emit>
std::string captured_stderr(Emit emit) {
  FILE* file = std::tmpfile();
  EXPECT_NE(file, nullptr);
  const int saved = ::dup(2);
  ::dup2(::fileno(file), 2);
  emit();
  ::dup2(saved, 2);
  ::close(saved);
  std::string text;
  std::rewind(file);
  char buffer[4096];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, file)) > 0) text.append(buffer, n);
  std::fclose(file);
  return text;
}

LogLevel expected_threshold() {
  const char* value = std::getenv("GPUSHIM_LOG");
  if (value == nullptr || *value == '\0') return LogLevel::warn;  // the table's default
  if (std::strcmp(value, "quiet") == 0) return LogLevel::quiet;
  if (std::strcmp(value, "info") == 0) return LogLevel::info;
  if (std::strcmp(value, "debug") == 0) return LogLevel::debug;
  return LogLevel::warn;
}

TEST(Log, ThresholdFollowsGpushimLog) {
  EXPECT_EQ(settings().log, expected_threshold());
}

TEST(Log, PrintsExactlyTheEnabledLevels) {
  const int threshold = static_cast<int>(expected_threshold());
  for (LogLevel level : {LogLevel::warn, LogLevel::info, LogLevel::debug}) {
    const std::string out = captured_stderr([&] { log(level, "level %d says %s", static_cast<int>(level), "hi"); });
    if (static_cast<int>(level) <= threshold) {
      EXPECT_EQ(out, "gpushim: level " + std::to_string(static_cast<int>(level)) + " says hi\n");
    } else {
      EXPECT_EQ(out, "") << "level " << static_cast<int>(level) << " must be silent";
    }
  }
  // "quiet" is a threshold only: a message at that level never prints.
  EXPECT_EQ(captured_stderr([] { log(LogLevel::quiet, "never"); }), "");
}

TEST(Log, OncePrintsOnceAndOnlyWhenEnabled) {
  static bool once = false;
  const std::string out = captured_stderr([] {
    for (int i = 0; i < 3; ++i) log_once(&once, LogLevel::warn, "double free of %p", reinterpret_cast<void*>(0x1000));
  });
  if (expected_threshold() == LogLevel::quiet) {
    EXPECT_EQ(out, "");
  } else {
    EXPECT_EQ(out, "gpushim: double free of 0x1000\n");
    EXPECT_TRUE(once);
  }
}

TEST(Log, LongMessagesAreCutToOneLine) {
  if (expected_threshold() == LogLevel::quiet) GTEST_SKIP() << "nothing prints when quiet";
  const std::string long_text(5000, 'x');
  const std::string out = captured_stderr([&] { log(LogLevel::warn, "%s", long_text.c_str()); });
  ASSERT_GT(out.size(), 100u);
  EXPECT_LE(out.size(), 1024u);
  EXPECT_EQ(out.rfind("gpushim: x", 0), 0u);
  EXPECT_EQ(out.substr(out.size() - 4), "...\n");
  EXPECT_EQ(out.find('\n'), out.size() - 1);
}

TEST(Log, KeepsErrno) {
  errno = ENOMEM;
  captured_stderr([] { log(LogLevel::warn, "x"); });
  EXPECT_EQ(errno, ENOMEM);
}

TEST(FormatBytes, UnitsAndRounding) {
  char buf[32];
  EXPECT_STREQ(format_bytes(0, buf, sizeof buf), "0 B");
  EXPECT_STREQ(format_bytes(1023, buf, sizeof buf), "1023 B");
  EXPECT_STREQ(format_bytes(1024, buf, sizeof buf), "1.00 KiB");
  EXPECT_STREQ(format_bytes(1536ull << 20, buf, sizeof buf), "1.50 GiB");
  EXPECT_STREQ(format_bytes(256ull << 20, buf, sizeof buf), "256.00 MiB");
  EXPECT_STREQ(format_bytes(3ull << 40, buf, sizeof buf), "3.00 TiB");
  EXPECT_STREQ(format_bytes(~0ull, buf, sizeof buf), "16.00 EiB");
  char tiny[4];
  EXPECT_STREQ(format_bytes(1ull << 30, tiny, sizeof tiny), "1.0");  // truncated, still terminated
}

}  // namespace
}  // namespace gpushim
