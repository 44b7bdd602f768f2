// `gpushim check`, and the same check `gpushim run` makes before it starts a program: every GPUSHIM_
// variable of an environment judged as libgpushim.so judges it (the settings table, config/settings.h),
// plus what only the machine can tell: whether the files a setting names can be written, and whether
// the devices a setting names exist.
#pragma once

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace CLI { class App; }

namespace gpushim::tools {

// Devices the CUDA driver of this machine reports; count -1 when it cannot be asked (no libcuda.so.1,
// as on a CPU machine, or cuInit fails), and `how` says which.
struct DeviceCount {
  int count = -1;
  std::string how;
};
DeviceCount count_devices();

struct CheckedVariable {
  std::string variable;
  std::string value;      // as written; empty when unset or empty (both mean the default)
  bool known = true;      // false: a GPUSHIM_ variable no row of the table reads
  std::string meaning;    // what the library will use (setting_value_meaning)
  std::string problem;    // empty when all is well
  bool error = false;     // the problem is an error (a warning otherwise: an unknown variable)
};

struct SettingsCheck {
  std::vector<CheckedVariable> variables;  // every row of the table, then unknown variables
  int errors = 0;
  int warnings = 0;
  bool strict = false;    // GPUSHIM_STRICT is on: the library would stop on any error
  bool quiet = false;     // GPUSHIM_LOG=quiet
};

using Environment = std::vector<std::pair<std::string, std::string>>;
// The GPUSHIM_ variables of this process's environment.
Environment gpushim_environment();

// Judges `environment`. Devices named by a setting are compared with `devices` when its count is
// known, else only with the range any machine allows.
SettingsCheck check_settings(const Environment& environment, const DeviceCount& devices);

// Why a file could not be created or overwritten at `path` (after %p/%r expansion), or "" when it can:
// the folder exists and takes a new file (a probe file is created and removed), or the file that is
// there is a regular file open for writing. A directory, /dev/full and a missing folder all fail.
std::string unwritable_reason(const std::string& path);

// One line per variable; `all` includes the unset ones (shown with their defaults).
void print_check(const SettingsCheck& check, const DeviceCount& devices, bool all, std::FILE* out);

void add_check_command(CLI::App& app);

}  // namespace gpushim::tools
