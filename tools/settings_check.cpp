#include "tools/settings_check.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "config/settings.h"
#include "tools/exit_codes.h"
#include "tracing/trace_recorder.h"

extern char** environ;

namespace gpushim::tools {
namespace {

// The driver's cuInit and cuDeviceGetCount, declared here without cuda.h: the command builds where the
// CUDA toolkit is absent. CUresult is an enum, 0 for success.
using InitFunction = int (*)(unsigned int flags);
using CountFunction = int (*)(int* count);

std::string variable_value(const Environment& environment, const std::string& variable) {
  for (const auto& [name, value] : environment)
    if (name == variable) return value;
  return {};
}

const char* lookup_in(const char* name, void* user) {
  const auto* environment = static_cast<const Environment*>(user);
  for (const auto& [variable, value] : *environment)
    if (variable == name) return value.c_str();
  return nullptr;
}

// Levenshtein distance, to suggest the row a misspelt variable meant.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// A misspelling worth suggesting is a few letters off; further than this, the name is just unknown.
constexpr std::size_t kMaxSuggestionDistance = 3;

std::string closest_variable(const std::string& name) {
  std::string best;
  std::size_t best_distance = kMaxSuggestionDistance + 1;
  for (const SettingRow& row : setting_rows()) {
    const std::size_t distance = edit_distance(name, row.variable);
    if (distance < best_distance) best_distance = distance, best = row.variable;
  }
  return best;
}

// The ordinals of a device list the table accepted ("0,1,3"); none for "all".
std::vector<int> listed_devices(const std::string& list) {
  std::vector<int> devices;
  int value = -1;
  for (std::size_t i = 0; i <= list.size(); ++i) {
    const char c = i < list.size() ? list[i] : ',';
    if (c >= '0' && c <= '9') {
      value = (value < 0 ? 0 : value) * 10 + (c - '0');
    } else {
      if (value >= 0) devices.push_back(value);
      value = -1;
    }
  }
  return devices;
}

std::string device_problem(const SettingRow& row, const std::string& value, const DeviceCount& devices) {
  if (std::strcmp(row.type, "list") != 0 || devices.count < 0) return {};
  for (int device : listed_devices(value))
    if (device >= devices.count)
      return "device " + std::to_string(device) + " does not exist: the driver reports " +
             std::to_string(devices.count) + (devices.count == 1 ? " device" : " devices") +
             (devices.count == 1 ? " (0)" : devices.count > 1 ? " (0-" + std::to_string(devices.count - 1) + ")" : "");
  return {};
}

}  // namespace

DeviceCount count_devices() {
  DeviceCount result;
  void* driver = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (driver == nullptr) {
    result.how = "no CUDA driver on this machine (libcuda.so.1 not found)";
    return result;
  }
  auto init = reinterpret_cast<InitFunction>(::dlsym(driver, "cuInit"));
  auto count = reinterpret_cast<CountFunction>(::dlsym(driver, "cuDeviceGetCount"));
  int n = 0;
  int rc = -1;
  if (init && count && (rc = init(0)) == 0 && (rc = count(&n)) == 0) {
    result.count = n;
    result.how = "the CUDA driver reports " + std::to_string(n) + (n == 1 ? " device" : " devices");
  } else {
    result.how = "the CUDA driver did not answer (error " + std::to_string(rc) + ", no GPU or no permission)";
  }
  // The driver stays loaded: unloading libcuda after cuInit is not supported.
  return result;
}

Environment gpushim_environment() {
  Environment environment;
  for (char** entry = environ; entry && *entry; ++entry) {
    const char* equals = std::strchr(*entry, '=');
    if (!equals || std::strncmp(*entry, "GPUSHIM_", 8) != 0) continue;
    environment.emplace_back(std::string(*entry, std::size_t(equals - *entry)), std::string(equals + 1));
  }
  std::sort(environment.begin(), environment.end());
  return environment;
}

std::string unwritable_reason(const std::string& pattern) {
  char expanded[4096];
  if (!tracing::expand_trace_path(pattern.c_str(), expanded, sizeof expanded)) return "the path is too long";
  const std::string path = expanded;
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0) {
    if (S_ISDIR(info.st_mode)) return path + " is a directory, not a file";
    if (!S_ISREG(info.st_mode)) return path + " is not a regular file (a device, a pipe or a socket)";
    if (::access(path.c_str(), W_OK) != 0) return path + " exists and cannot be written: " + std::strerror(errno);
    return {};
  }
  const std::size_t slash = path.rfind('/');
  const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (::stat(folder.c_str(), &info) != 0) return "folder " + folder + " does not exist";
  if (!S_ISDIR(info.st_mode)) return folder + " is not a folder";
  // access(W_OK) says yes on a read-only file system mounted writable for root; creating a file says.
  std::string probe = folder + "/.gpushim-check-XXXXXX";
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) return "cannot create a file in " + folder + ": " + std::strerror(errno);
  ::close(fd);
  ::unlink(probe.c_str());
  return {};
}

SettingsCheck check_settings(const Environment& environment, const DeviceCount& devices) {
  SettingsCheck check;
  Environment copy = environment;
  const Settings parsed = parse_settings(&lookup_in, &copy);
  check.strict = parsed.strict;
  check.quiet = parsed.log == LogLevel::quiet;
  for (const SettingRow& row : setting_rows()) {
    CheckedVariable line;
    line.variable = row.variable;
    line.value = variable_value(environment, row.variable);
    if (!line.value.empty() && setting_value_rejected_by(row.variable, line.value.c_str())) {
      line.problem = std::string("not valid; accepted: ") + row.accepted;
    } else {
      line.meaning = setting_value_meaning(row, line.value.c_str());
      if (!line.value.empty() && std::strcmp(row.type, "path") == 0) line.problem = unwritable_reason(line.value);
      if (line.problem.empty()) line.problem = device_problem(row, line.value, devices);
    }
    line.error = !line.problem.empty();
    check.errors += line.error;
    check.variables.push_back(std::move(line));
  }
  for (const auto& [name, value] : environment) {
    const bool known = std::any_of(setting_rows().begin(), setting_rows().end(),
                                   [&](const SettingRow& row) { return name == row.variable; });
    if (known) continue;
    CheckedVariable line;
    line.variable = name;
    line.value = value;
    line.known = false;
    const std::string suggestion = closest_variable(name);
    line.problem = "not a gpushim setting; libgpushim.so ignores it" +
                   (suggestion.empty() ? std::string() : " (did you mean " + suggestion + "?)");
    check.warnings++;
    check.variables.push_back(std::move(line));
  }
  return check;
}

void print_check(const SettingsCheck& check, const DeviceCount& devices, bool all, std::FILE* out) {
  // Columns: variable, value as written, then what it means or what is wrong. Long values push their
  // line's third column right rather than widening every line.
  constexpr std::size_t kValueColumn = 16;
  std::size_t width = 0;
  for (const CheckedVariable& v : check.variables) width = std::max(width, v.variable.size());
  for (const CheckedVariable& v : check.variables) {
    if (!all && v.value.empty() && v.problem.empty()) continue;
    const std::string written = v.value.empty() ? "(unset)" : v.value;
    const std::string verdict = !v.problem.empty() ? (v.error ? "ERROR: " : "warning: ") + v.problem
                                : v.value.empty()  ? "-> " + v.meaning + " (default)"
                                                   : "-> " + v.meaning;
    std::fprintf(out, "%-*s  %-*s  %s\n", int(width), v.variable.c_str(), int(kValueColumn), written.c_str(),
                 verdict.c_str());
  }
  std::fprintf(out, "devices: %s%s\n", devices.how.c_str(),
               devices.count < 0 ? "; device numbers checked against 0-63 only" : "");
  if (check.errors == 0) {
    std::fprintf(out, "ok: libgpushim.so would start with these settings%s\n",
                 check.warnings ? " (see the warnings above)" : "");
  } else {
    std::fprintf(out,
                 "%d error%s: a bad value makes libgpushim.so run on passthrough (the real driver), or stop "
                 "under GPUSHIM_STRICT=1; a path that cannot be written records nothing\n",
                 check.errors, check.errors == 1 ? "" : "s");
  }
}

void add_check_command(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "check", "Judge the GPUSHIM_ variables of this environment as libgpushim.so would, before the GPU job");
  command->footer(
      "Prints each variable with the value the library will use, or what is wrong with it; checks that\n"
      "the files GPUSHIM_TRACE (and any other path setting) names can be written, and that the devices a\n"
      "setting names exist (asks the CUDA driver; without one, only their range is checked).\n"
      "Exit status: 0 no error (warnings allowed), 1 at least one error.");
  auto all = std::make_shared<bool>(false);
  command->add_flag("-a,--all", *all, "also list the variables that are not set, with their defaults");
  command->callback([all] {
    const DeviceCount devices = count_devices();
    const SettingsCheck check = check_settings(gpushim_environment(), devices);
    print_check(check, devices, *all, stdout);
    std::fflush(stdout);
    if (check.errors) throw CLI::RuntimeError(kExitFailed);
  });
}

}  // namespace gpushim::tools
