// `gpushim trace summary|report|export|replay|compress`: parsing only; the work is in
// analysis/trace_tool_commands.cpp. A failing subcommand ends the program with its exit code through
// CLI::RuntimeError (2: the trace is unreadable, the message names the byte offset).
#include "tools/trace_commands.h"

#include <CLI/CLI.hpp>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>

#ifdef GPUSHIM_HAVE_TRACE_TOOLS
#include "analysis/trace_tool_commands.h"
#endif

namespace gpushim::tools {
namespace {

[[maybe_unused]] void finish(int code) {
  if (code != 0) throw CLI::RuntimeError(code);
}

// Decimal digits only, no sign, no space, no suffix, at most 2^64 - 1: a lag is a count, and a value
// that is none must not turn silently into 0 or wrap to a huge one.
[[maybe_unused]] bool parse_count(const std::string& text, std::uint64_t* out) {
  if (text.empty()) return false;
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t digit = std::uint64_t(c - '0');
    if (value > (~std::uint64_t{0} - digit) / 10) return false;
    value = value * 10 + digit;
  }
  *out = value;
  return true;
}

// The message names what the option accepts and never echoes the value (it may be any bytes).
[[maybe_unused]] CLI::Validator count_of(const char* what) {
  return CLI::Validator(
      [what](std::string& value) {
        std::uint64_t ignored;
        return parse_count(value, &ignored) ? std::string()
                                            : std::string("a whole number of ") + what + ", 0 to 18446744073709551615";
      },
      "");
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
    std::string file, output, format = "chrome", backend = "all", lag_events = "0", lag_us = "0";
    bool fence_batches = false, thread_caches = false, large_slots = false;
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
  replay->add_option("--gpu-lag-events", options->lag_events,
                     "model fenced frees: a freed block is reusable only N allocation/free calls later")
      ->check(count_of("allocation/free calls"))
      ->type_name("N");
  replay->add_option("--gpu-lag-us", options->lag_us,
                     "model fenced frees: a freed block is reusable only T microseconds (trace time) later")
      ->check(count_of("microseconds"))
      ->type_name("T");
  replay->add_flag("--fence-batches", options->fence_batches,
                   "model gpushim's fence batches too: the lag starts when a free's batch closes");
  replay->add_flag("--thread-caches", options->thread_caches,
                   "put the preloaded library's per-thread caches in front of the backend; each trace thread "
                   "replays on a thread of its own");
  replay->add_flag("--large-slots", options->large_slots,
                   "with --thread-caches: their exact-size slots above 1 MiB too, parking always "
                   "(GPUSHIM_LARGE_SLOTS=1; the default parks only while threads contend, which a replay, one "
                   "call at a time, never does)");
  replay->footer("With a lag the table adds `peak waiting`: the most bytes freed but not yet reusable.\n"
                 "Both lags given: a block waits for both. --fence-batches alone: batches with no lag.\n"
                 "docs/trace-format.md, \"Replay with a GPU lag\".");
  replay->callback([options] {
    GpuLag lag;
    parse_count(options->lag_events, &lag.events);  // checked above
    parse_count(options->lag_us, &lag.microseconds);
    lag.batches = options->fence_batches;
    ReplayCaches caches;
    caches.thread_caches = options->thread_caches || options->large_slots;
    caches.large_slots = options->large_slots;
    finish(run_trace_replay(options->file, options->backend, {std::cout, std::cerr}, lag, caches));
  });

  CLI::App* compress = trace->add_subcommand("compress", "Write a zstd-compressed copy of a trace");
  compress->add_option("file", options->file, "trace file")->required();
  compress->add_option("-o,--output", options->output, "compressed file to write")->required();
  compress->callback([options] {
    finish(run_trace_compress(options->file, options->output, {std::cout, std::cerr}));
  });
}
#endif

}  // namespace gpushim::tools
