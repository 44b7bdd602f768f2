#include "tools/run_command.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "config/settings.h"
#include "tools/exit_codes.h"
#include "tools/settings_check.h"

namespace gpushim::tools {
namespace {

constexpr const char* kLibraryName = "libgpushim.so";

struct RunOptions {
  std::string backend;
  bool stats = false;
  std::string limit;
  std::string trace;
  std::string log;
};

std::string directory_of_executable() {
  char path[PATH_MAX];
  const ssize_t length = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (length <= 0) return ".";
  path[length] = '\0';
  std::string executable(path);
  return executable.substr(0, executable.rfind('/'));
}

// The build tree has build/gpushim and build/lib/libgpushim.so; an installed tree has bin/gpushim and
// lib/libgpushim.so. The path where this build put the library (GPUSHIM_BUILD_TREE_LIBRARY) is a last
// resort only for the build tree's own command, reached directly or through a symlink
// (/proc/self/exe is resolved): a copy of the command elsewhere is an installation, and an
// installation that lacks its library must say so, not run a build tree's.
bool is_the_build_tree_command() {
#ifdef GPUSHIM_BUILD_TREE_COMMAND
  char built[PATH_MAX], running[PATH_MAX];
  return ::realpath(GPUSHIM_BUILD_TREE_COMMAND, built) && ::realpath("/proc/self/exe", running) &&
         std::strcmp(built, running) == 0;
#else
  return false;
#endif
}

std::vector<std::string> library_candidates() {
  const std::string here = directory_of_executable();
  std::vector<std::string> candidates = {here + "/" + kLibraryName, here + "/lib/" + kLibraryName,
                                         here + "/../lib/" + kLibraryName};
#ifdef GPUSHIM_BUILD_TREE_LIBRARY
  if (is_the_build_tree_command()) candidates.push_back(GPUSHIM_BUILD_TREE_LIBRARY);
#endif
  return candidates;
}

std::string find_library() {
  for (const std::string& candidate : library_candidates()) {
    char resolved[PATH_MAX];
    if (::access(candidate.c_str(), R_OK) == 0 && ::realpath(candidate.c_str(), resolved))
      return resolved;
  }
  return {};
}

// LD_PRELOAD takes colon- or space-separated paths. gpushim goes first so that its dlsym is the one
// the program's CUDA runtime meets; an older copy of it further down the list is dropped.
std::string prepend_preload(const std::string& library, const char* existing) {
  std::string result = library;
  if (existing == nullptr) return result;
  std::string entry;
  for (const char* c = existing;; ++c) {
    if (*c == ':' || *c == ' ' || *c == '\0') {
      if (!entry.empty() && entry != library) result += ":" + entry;
      entry.clear();
      if (*c == '\0') break;
    } else {
      entry += *c;
    }
  }
  return result;
}

// The GPUSHIM_ variables the program will see, judged before it starts: the library reads them only at
// the program's first CUDA call, which may come late or never. The driver is not asked how many
// devices exist (cuInit takes up to a second); `gpushim check` does that. Returns false when the
// program must not start: an error under GPUSHIM_STRICT=1, as the library itself would stop.
bool settings_allow_start(const std::string& program) {
  const DeviceCount not_asked{-1, "not asked"};
  const SettingsCheck check = check_settings(gpushim_environment(), not_asked);
  const bool refuse = check.errors > 0 && check.strict;
  if (!check.quiet || refuse) {
    for (const CheckedVariable& v : check.variables) {
      if (v.problem.empty()) continue;
      std::fprintf(stderr, "gpushim run: %s=%s: %s%s\n", v.variable.c_str(), v.value.c_str(), v.problem.c_str(),
                   !v.error || refuse ? "" : v.known && v.meaning.empty() ? "; the program will run on passthrough"
                                                                         : "");
    }
  }
  if (refuse)
    std::fprintf(stderr, "gpushim run: not starting %s: GPUSHIM_STRICT=1 and %d bad setting%s (see `gpushim check`)\n",
                 program.c_str(), check.errors, check.errors == 1 ? "" : "s");
  return !refuse;
}

[[noreturn]] void run(const RunOptions& options, const std::vector<std::string>& command) {
  if (command.empty()) {
    std::fprintf(stderr, "gpushim run: no command given (usage: gpushim run [options] -- CMD ARGS...)\n");
    std::exit(kExitUsage);
  }
  const std::string library = find_library();
  if (library.empty()) {
    std::fprintf(stderr, "gpushim run: %s not found; looked in:\n", kLibraryName);
    for (const std::string& candidate : library_candidates()) std::fprintf(stderr, "  %s\n", candidate.c_str());
    std::fprintf(stderr,
                 "Build it first (it needs the CUDA toolkit): cmake --build build --target gpushim\n");
    std::exit(kExitCannotStart);
  }

  if (!options.backend.empty()) ::setenv("GPUSHIM_BACKEND", options.backend.c_str(), 1);
  if (options.stats) ::setenv("GPUSHIM_STATS", "1", 1);
  if (!options.limit.empty()) ::setenv("GPUSHIM_LIMIT", options.limit.c_str(), 1);
  if (!options.trace.empty()) ::setenv("GPUSHIM_TRACE", options.trace.c_str(), 1);
  if (!options.log.empty()) ::setenv("GPUSHIM_LOG", options.log.c_str(), 1);
  if (!settings_allow_start(command.front())) std::exit(kExitCannotStart);
  ::setenv("LD_PRELOAD", prepend_preload(library, ::getenv("LD_PRELOAD")).c_str(), 1);

  std::vector<char*> argv;
  for (const std::string& word : command) argv.push_back(const_cast<char*>(word.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  const int error = errno;
  std::fprintf(stderr, "gpushim run: cannot run '%s': %s\n", argv[0], std::strerror(error));
  // As env(1) and the shells: 127 for a command that is not there, 126 for one that cannot be executed.
  std::exit(error == ENOENT || error == ENOTDIR ? kExitNotFound : kExitCannotExecute);
}

}  // namespace

WordsAfterSeparator split_command_after_separator(int* argc, char** argv) {
  int first_word = 1;
  while (first_word < *argc && argv[first_word][0] == '-') ++first_word;
  if (first_word >= *argc || std::strcmp(argv[first_word], "run") != 0) return {};
  for (int i = first_word + 1; i < *argc; ++i) {
    if (std::strcmp(argv[i], "--") != 0) continue;
    WordsAfterSeparator after{true, std::vector<std::string>(argv + i + 1, argv + *argc)};
    *argc = i;
    argv[i] = nullptr;
    return after;
  }
  return {};
}

void add_run_command(CLI::App& app, WordsAfterSeparator after_separator) {
  auto options = std::make_shared<RunOptions>();
  CLI::App* run_app = app.add_subcommand(
      "run", "Run a command with libgpushim.so preloaded: gpushim run [options] -- CMD ARGS...");
  run_app->footer(
      "Sets the variables its options name and keeps the other GPUSHIM_ variables of the environment;\n"
      "judges them all first (as `gpushim check`, without asking the driver) and, under GPUSHIM_STRICT=1,\n"
      "does not start the command when one is bad. Every variable: `gpushim settings`.\n"
      "Exit status: the command's own; 64 bad usage; 125 gpushim could not start it (no libgpushim.so, or\n"
      "a bad setting under GPUSHIM_STRICT=1); 126 the command cannot be executed; 127 it was not found.");
  run_app->prefix_command();  // everything from the command on belongs to the command

  // Each option's value is checked by the settings table itself, so the CLI and the library accept the
  // same values and say the same thing about them.
  auto checked_as = [](const char* variable) {
    return CLI::Validator(
        [variable](std::string& value) {
          const SettingRow* row = setting_value_rejected_by(variable, value.c_str());
          return row ? std::string(variable) + " accepts " + row->accepted : std::string();
        },
        "");
  };
  auto described = [](const char* variable, const char* what) {
    for (const SettingRow& row : setting_rows())
      if (std::strcmp(row.variable, variable) == 0)
        return std::string(variable) + ": " + what + " (" + row.accepted + "; default: " + row.default_value + ")";
    return std::string(variable);
  };
  run_app->add_option("--backend", options->backend, described("GPUSHIM_BACKEND", "the backend"))
      ->check(checked_as("GPUSHIM_BACKEND"));
  run_app->add_flag("--stats", options->stats, "GPUSHIM_STATS=1: print a statistics table at exit");
  run_app->add_option("--limit", options->limit, described("GPUSHIM_LIMIT", "memory cap"))
      ->check(checked_as("GPUSHIM_LIMIT"));
  run_app->add_option("--trace", options->trace, "GPUSHIM_TRACE: record a trace to PATH (%p = pid)");
  run_app->add_option("--log", options->log, described("GPUSHIM_LOG", "what gpushim prints"))
      ->check(checked_as("GPUSHIM_LOG"));

  // `gpushim run env -- x` runs `env -- x`: words before the separator that no option took belong to
  // the command, and so does the separator itself then.
  run_app->callback([run_app, options, after_separator] {
    std::vector<std::string> command = run_app->remaining();
    // prefix_command() hands over an unknown option as if it were the program: "--bogus" is a typo of
    // an option far more often than a program's name (which can still follow "--").
    if (!command.empty() && command.front().size() > 1 && command.front()[0] == '-') {
      std::fprintf(stderr,
                   "gpushim run: unknown option '%s' (options: --backend, --stats, --limit, --trace, --log; "
                   "the command goes after --)\n",
                   command.front().c_str());
      std::exit(kExitUsage);
    }
    if (!command.empty() && after_separator.found) command.push_back("--");
    command.insert(command.end(), after_separator.words.begin(), after_separator.words.end());
    run(*options, command);
  });
}

}  // namespace gpushim::tools
