// gpushim's only way to speak: one line on stderr, formatted into a stack buffer (never malloc, never
// a CUDA call), guarded against re-entrance, and silent below the level GPUSHIM_LOG asks for.
// We live inside someone else's process: everything printed starts with "gpushim: ".
#pragma once

#include "config/settings.h"

namespace gpushim {

// printf-style. Writes "gpushim: <message>\n" with one write(2) when `level` is enabled.
void log(LogLevel level, const char* format, ...) __attribute__((format(printf, 2, 3)));

// Output the user asked for (the GPUSHIM_STATS table): printed whatever GPUSHIM_LOG says.
void print_report_line(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Same as log(), but prints at most once per `once_flag` (a static bool at the call site).
void log_once(bool* once_flag, LogLevel level, const char* format, ...)
    __attribute__((format(printf, 3, 4)));

}  // namespace gpushim
