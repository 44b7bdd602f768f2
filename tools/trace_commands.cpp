// `gpushim trace summary|report|export|replay|compress`: parsing only; the work is in
// analysis/trace_tool_commands.cpp. A failing subcommand ends the program with its exit code through
// CLI::RuntimeError (2: the trace is unreadable, the message names the byte offset).
#include "tools/trace_commands.h"

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#ifdef GPUSHIM_HAVE_TRACE_TOOLS
#include "analysis/trace_tool_commands.h"
#endif

namespace gpushim::tools {
namespace {

[[maybe_unused]] void finish(int code) {
  if (code != 0) throw CLI::RuntimeError(code);
}

}  // namespace

#ifndef GPUSHIM_HAVE_TRACE_TOOLS
// Built without gpushim_trace_tools (no nlohmann-json here, as on the GPU machine): say so.
void add_trace_commands(CLI::App& app) {
  CLI::App* trace = app.add_subcommand("trace", "Trace tools (not in this build: needs nlohmann-json)");
  trace->allow_extras();
  trace->callback([] {
    std::cerr << "gpushim: this build has no trace tools (install nlohmann-json3-dev and rebuild)\n";
    throw CLI::RuntimeError(1);
  });
}
#else
void add_trace_commands(CLI::App& app) {
  using namespace gpushim::tracing;
  CLI::App* trace = app.add_subcommand("trace", "Summarise, plot, export and replay allocation traces");
  trace->require_subcommand(1);
  trace->footer("Exit status: 0 success; 1 an output file cannot be written; 2 the trace is damaged or unreadable;\n"
                "64 bad usage.");

  struct Options {
    std::string file, output, format = "chrome", backend = "all";
    std::size_t top = 10;
  };
  auto options = std::make_shared<Options>();

  CLI::App* summary = trace->add_subcommand("summary", "Counts, bytes, peaks, sizes, lifetimes, top sites");
  summary->add_option("file", options->file, "trace file (raw or .zst)")->required();
  summary->add_option("--top", options->top, "allocation sites to list");
  summary->callback([options] { finish(run_trace_summary(options->file, options->top, {std::cout, std::cerr})); });

  CLI::App* report = trace->add_subcommand("report", "One self-contained HTML page with plots");
  report->add_option("file", options->file, "trace file (raw or .zst)")->required();
  report->add_option("-o,--output", options->output, "HTML file to write")->required();
  report->callback([options] { finish(run_trace_report(options->file, options->output, {std::cout, std::cerr})); });

  CLI::App* exporter = trace->add_subcommand(
      "export", "Chrome Trace Event JSON (Perfetto), or a PyTorch memory snapshot (--format torch-snapshot)");
  exporter->add_option("file", options->file, "trace file (raw or .zst)")->required();
  exporter->add_option("--format", options->format, "output format")->check(CLI::IsMember({"chrome", "torch-snapshot"}));
  exporter->add_option("-o,--output", options->output, "file to write (JSON, or a .pickle for torch-snapshot)")->required();
  exporter->callback([options] {
    finish(run_trace_export(options->file, options->format, options->output, {std::cout, std::cerr}));
  });

  CLI::App* replay = trace->add_subcommand("replay", "Replay against backends on host memory");
  replay->add_option("file", options->file, "trace file (raw or .zst)")->required();
  replay->add_option("--backend", options->backend, "backend name, or all");
  replay->callback([options] { finish(run_trace_replay(options->file, options->backend, {std::cout, std::cerr})); });

  CLI::App* compress = trace->add_subcommand("compress", "Write a zstd-compressed copy of a trace");
  compress->add_option("file", options->file, "trace file")->required();
  compress->add_option("-o,--output", options->output, "compressed file to write")->required();
  compress->callback([options] {
    finish(run_trace_compress(options->file, options->output, {std::cout, std::cerr}));
  });
}
#endif

}  // namespace gpushim::tools
