// The exit statuses of the `gpushim` command, one meaning each (README.md, "Exit status").
// `gpushim run` passes the program's own status through; its own failures use 125-127 as env(1),
// timeout(1) and the shells do, so they cannot be mistaken for gpushim's other codes.
#pragma once

namespace gpushim::tools {

inline constexpr int kExitFailed = 1;         // the work failed: `check` found an error, an output cannot be written
inline constexpr int kExitDamagedInput = 2;   // a trace or dump is unreadable (tracing::kExitBadTrace)
inline constexpr int kExitUsage = 64;         // the command line is wrong (sysexits.h EX_USAGE)
inline constexpr int kExitCannotStart = 125;  // run: no library, or GPUSHIM_STRICT=1 and a setting is bad
inline constexpr int kExitCannotExecute = 126;  // run: the command exists but cannot be executed
inline constexpr int kExitNotFound = 127;       // run: the command was not found

}  // namespace gpushim::tools
