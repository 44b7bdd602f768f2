// gpushim prints from inside someone else's process, possibly from inside a driver call or while the
// program's heap is busy: so a message is formatted into a stack buffer and leaves with one write(2)
// (one write keeps lines from different threads whole), and a thread-local flag drops any message that
// would be printed while this thread is already printing (heaptrack's and mimalloc's guard).
#include "diagnostics/log.h"

#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>

#include "diagnostics/hot_tls.h"

namespace gpushim {
namespace {

// Longer messages are cut and end in "...": a log line is a sentence, not a dump.
constexpr int kLineCapacity = 1024;
constexpr char kPrefix[] = "gpushim: ";

// Initial-exec (hot_tls.h): touching the flag never calls __tls_get_addr, which may allocate.
GPUSHIM_HOT_TLS bool t_printing = false;

bool enabled(LogLevel level) {
  if (level == LogLevel::quiet) return false;  // "quiet" is a threshold, not a message level
  return static_cast<int>(level) <= static_cast<int>(settings().log);
}

void write_message(const char* format, va_list args) {
  if (t_printing) return;
  t_printing = true;

  char line[kLineCapacity];
  constexpr int prefix_length = sizeof kPrefix - 1;
  __builtin_memcpy(line, kPrefix, prefix_length);
  // Room for the message, then '\n'.
  const int room = kLineCapacity - prefix_length - 1;
  int length = std::vsnprintf(line + prefix_length, static_cast<std::size_t>(room) + 1, format, args);
  if (length < 0) {
    t_printing = false;
    return;
  }
  if (length > room) {
    length = room;
    __builtin_memcpy(line + prefix_length + length - 3, "...", 3);
  }
  length += prefix_length;
  line[length++] = '\n';

  ssize_t written;
  do {
    written = ::write(2, line, static_cast<std::size_t>(length));
  } while (written < 0 && errno == EINTR);
  t_printing = false;
}

}  // namespace

void print_report_line(const char* format, ...) {
  va_list args;
  va_start(args, format);
  write_message(format, args);
  va_end(args);
}

void log(LogLevel level, const char* format, ...) {
  if (!enabled(level)) return;
  const int saved_errno = errno;  // a message must not change what the program sees in errno
  va_list args;
  va_start(args, format);
  write_message(format, args);
  va_end(args);
  errno = saved_errno;
}

void log_once(bool* once_flag, LogLevel level, const char* format, ...) {
  if (!enabled(level)) return;
  // The flag is a plain static bool at the call site; exchange it atomically so two threads that hit
  // the same condition together still print one line.
  if (__atomic_exchange_n(once_flag, true, __ATOMIC_RELAXED)) return;
  const int saved_errno = errno;
  va_list args;
  va_start(args, format);
  write_message(format, args);
  va_end(args);
  errno = saved_errno;
}

}  // namespace gpushim
