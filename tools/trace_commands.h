// The `gpushim trace ...` subcommands (summary, report, export, replay), added to the command line.
#pragma once

namespace CLI { class App; }

namespace gpushim::tools {
void add_trace_commands(CLI::App& app);
}  // namespace gpushim::tools
