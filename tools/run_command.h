// `gpushim run [--backend B] [--stats] [--limit X] [--trace PATH] [--log L] -- CMD ARGS...`:
// sets the GPUSHIM_ variables, puts libgpushim.so first in LD_PRELOAD, and execs the command.
#pragma once

#include <string>
#include <vector>

namespace CLI { class App; }

namespace gpushim::tools {
// CLI11 hands a subcommand's words after "--" back to the parent, so main() splits them off before
// parsing (split_command_after_separator) and gives them here.
struct WordsAfterSeparator {
  bool found = false;
  std::vector<std::string> words;
};
void add_run_command(CLI::App& app, WordsAfterSeparator after_separator);

// If argv is `gpushim run ... -- CMD ARGS...`, removes "--" and what follows from argv (updating
// argc) and returns those words; otherwise returns found = false and leaves argv alone.
WordsAfterSeparator split_command_after_separator(int* argc, char** argv);
}  // namespace gpushim::tools
