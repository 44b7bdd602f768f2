// The `gpushim` command: run a program under gpushim, list the backends and settings, and the trace
// tools (tools/trace_commands.cpp).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>

#include "allocators/backend_registry.h"
#include "tools/run_command.h"
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
               "Quick start: gpushim run -- python train.py"};
  app.set_version_flag("--version", "gpushim 0.1.0");
  app.footer("\n" + gpushim::tools::settings_as_text());
  gpushim::tools::add_run_command(app, gpushim::tools::split_command_after_separator(&argc, argv));
  add_backends_command(app);
  add_settings_command(app);
  gpushim::tools::add_trace_commands(app);
  app.require_subcommand(0, 1);

  CLI11_PARSE(app, argc, argv);
  if (app.get_subcommands().empty()) {
    std::fputs(app.help().c_str(), stdout);
    return 2;
  }
  return 0;
}
