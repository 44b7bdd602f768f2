// The work behind each `gpushim trace ...` subcommand, as functions returning the exit code, so the
// command line (tools/trace_commands.cpp) stays a thin parser and tests call the same code.
// Exit codes: 0 success; 1 bad usage or an output file that cannot be written; 2 an unreadable trace
// (truncated, corrupted, empty, newer version), with a message that names the byte offset.
#pragma once

#include <cstddef>
#include <ostream>
#include <string>

#include "analysis/trace_replay.h"

namespace gpushim::tracing {

inline constexpr int kExitBadTrace = 2;

struct ToolStreams {
  std::ostream& out;       // results
  std::ostream& err;       // errors and progress
  bool progress = true;    // progress lines on `err` for large traces
};

int run_trace_summary(const std::string& path, std::size_t top_sites, ToolStreams io);
int run_trace_report(const std::string& path, const std::string& html_path, ToolStreams io);
int run_trace_export(const std::string& path, const std::string& format, const std::string& json_path,
                     ToolStreams io);
// `lag`: model fenced frees (analysis/trace_replay.h); without one, frees take effect at once and the
// table is the one earlier versions printed.
int run_trace_replay(const std::string& path, const std::string& backend, ToolStreams io, const GpuLag& lag = {},
                     const ReplayCaches& caches = {});
int run_trace_compress(const std::string& path, const std::string& output, ToolStreams io);

}  // namespace gpushim::tracing
