// The `gpushim` command: run a program under gpushim, list the backends and settings, and the trace
// tools (tools/trace_commands.cpp).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "allocators/backend_registry.h"
#include "tools/exit_codes.h"
#include "tools/run_command.h"
#include "tools/settings_check.h"
#include "tools/settings_help.h"
#include "tools/trace_commands.h"

namespace {

void add_backends_command(CLI::App& app) {
  CLI::App* backends = app.add_subcommand("backends", "List the backends GPUSHIM_BACKEND accepts");
  backends->callback([] {
    for (const gpushim::BackendInfo& info : gpushim::backend_table()) {
      const bool is_default = std::string(info.name) == gpushim::kDefaultBackend;
      const bool says_so = std::strstr(info.summary, "default") != nullptr;
      std::printf("%-12s %s%s\n", info.name, info.summary, is_default && !says_so ? " (default)" : "");
    }
  });
}

void add_settings_command(CLI::App& app) {
  CLI::App* settings = app.add_subcommand("settings", "Print every GPUSHIM_ variable (the settings table)");
  settings->footer("To judge the values set in this environment: gpushim check");
  auto markdown = std::make_shared<bool>(false);
  settings->add_flag("--markdown", *markdown, "as the Markdown table README.md pastes");
  settings->callback([markdown] {
    const std::string table =
        *markdown ? gpushim::tools::settings_as_markdown() : gpushim::tools::settings_as_text();
    std::fputs(table.c_str(), stdout);
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gpushim: a drop-in GPU memory allocator for unmodified CUDA programs.\n"
               "Quick start: gpushim check && gpushim run -- python train.py"};
  app.name("gpushim");
  app.set_version_flag("--version", "gpushim 0.1.0");
  gpushim::tools::add_run_command(app, gpushim::tools::split_command_after_separator(&argc, argv));
  gpushim::tools::add_check_command(app);
  add_backends_command(app);
  add_settings_command(app);
  gpushim::tools::add_trace_commands(app);
  app.require_subcommand(1, 1);
  // Set after the subcommands are added: CLI11 copies a footer into subcommands made after it.
  app.footer(
      "\n`gpushim SUBCOMMAND --help` tells more; `gpushim settings` lists every GPUSHIM_ variable.\n"
      "Exit status: 0 success; 1 the work failed (check found an error, an output cannot be written);\n"
      "2 a damaged or unreadable trace; 64 bad usage; run: the command's own status, 125-127 when it\n"
      "could not be started.");

  if (argc == 1) {  // nothing asked: the short help, as a usage error
    std::fputs(app.help().c_str(), stderr);
    return gpushim::tools::kExitUsage;
  }
  // CLI11 would answer "A subcommand is required" to a misspelt one: name it instead.
  const std::vector<CLI::App*> subcommands = app.get_subcommands({});
  const bool known_subcommand = std::any_of(subcommands.begin(), subcommands.end(),
                                            [&](const CLI::App* sub) { return sub->check_name(argv[1]); });
  if (argv[1][0] != '-' && !known_subcommand) {
    std::string known;
    for (const CLI::App* sub : subcommands) known += (known.empty() ? "" : ", ") + sub->get_name();
    std::fprintf(stderr, "gpushim: unknown subcommand '%s' (known: %s; gpushim --help)\n", argv[1], known.c_str());
    return gpushim::tools::kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();  // a subcommand's own status; it printed its message
  } catch (const CLI::ParseError& e) {
    // CLI11 numbers its parse errors 100-127; every one is a usage error here (tools/exit_codes.h).
    app.exit(e);
    return gpushim::tools::kExitUsage;
  }
  return 0;
}
