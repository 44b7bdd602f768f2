// Placeholder until the trace tools land (owner: tracing).
#include "tools/trace_commands.h"
#include <CLI/CLI.hpp>
namespace gpushim::tools {
void add_trace_commands(CLI::App& app) { app.add_subcommand("trace", "Trace tools (not built yet)"); }
}  // namespace gpushim::tools
