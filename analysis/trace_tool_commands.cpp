#include "analysis/trace_tool_commands.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>

#include "analysis/oom_dump_summary.h"
#include "analysis/torch_snapshot_export.h"
#include "analysis/trace_analysis.h"
#include "analysis/trace_chrome_export.h"
#include "analysis/trace_html_report.h"
#include "analysis/trace_reader.h"
#include "analysis/trace_replay.h"
#include "analysis/trace_symbolizer.h"
#include "config/printable.h"

namespace gpushim::tracing {
namespace {

// Progress lines appear only for work that takes a while: the first after a second, then one a
// second, so small traces stay quiet and a slow one (a big file, a zstd bomb) shows it is moving.
constexpr std::uint64_t kProgressMinEvents = 2000000;
constexpr std::chrono::seconds kProgressInterval{1};

ReadProgress read_progress(const std::string& path, ToolStreams& io) {
  if (!io.progress) return {};
  auto next = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now() +
                                                                      kProgressInterval);
  return [&io, path = printable(path), next](ReadStage stage, std::uint64_t done, std::uint64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (now < *next) return;
    *next = now + kProgressInterval;
    io.err << "gpushim: " << path << ": ";
    if (stage == ReadStage::decompressing)
      io.err << "decompressed " << (done >> 20) << " MiB so far (from " << format_size(total) << " compressed)\n";
    else if (total)
      io.err << (stage == ReadStage::reading ? "read " : "parsed ") << (done >> 20) << " / " << (total >> 20)
             << " MiB\n";
    else
      io.err << "read " << (done >> 20) << " MiB so far\n";
  };
}

// Tells the user what reading `path` found: a damaged trace, or one that was cut short.
bool report_read(const std::string& path, bool ok, const Trace& trace, const TraceError& error,
                 ToolStreams& io) {
  if (ok) {
    if (trace.truncated)
      io.err << "gpushim: " << printable(path) << ": warning: the file is cut short inside a chunk at byte offset "
             << trace.truncated_at << " (a partial copy?); read the " << trace.events.size()
             << " events before it\n";
    else if (!trace.clean_end)
      io.err << "gpushim: " << printable(path) << ": the recording was cut short (no end record); read up to the "
             << "last flush, " << trace.bytes << " bytes\n";
    return true;
  }
  io.err << "gpushim: " << printable(path) << ": unreadable trace at byte offset " << error.offset << ": "
         << printable(error.message) << "\n";
  return false;
}

bool load(const std::string& path, Trace* trace, ToolStreams& io) {
  TraceError error;
  bool ok = read_trace(path, trace, &error, read_progress(path, io));
  return report_read(path, ok, *trace, error, io);
}

bool write_file(const std::string& path, const std::string& data, ToolStreams& io) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  f.close();
  if (!f) {
    io.err << "gpushim: cannot write " << printable(path) << "\n";
    return false;
  }
  return true;
}

std::vector<std::uint64_t> site_addresses(const TraceSummary& s, std::size_t sites) {
  std::vector<std::uint64_t> out;
  for (std::size_t i = 0; i < std::min(sites, s.sites.size()); ++i)
    out.insert(out.end(), s.sites[i].frames.begin(), s.sites[i].frames.end());
  return out;
}

// One line above the table: which lag the numbers assume, in the user's units.
std::string describe_lag(const GpuLag& lag) {
  std::string what;
  if (lag.events) what = std::to_string(lag.events) + (lag.events == 1 ? " allocation/free call" : " allocation/free calls");
  if (lag.events && lag.microseconds) what += " and ";
  if (lag.microseconds) what += std::to_string(lag.microseconds) + " us";
  if (!lag.batches)
    return "GPU lag " + what + ": a freed block is reusable once the GPU has passed its free "
           "(async frees: at once on their stream)";
  return "GPU lag " + (what.empty() ? std::string("0") : what) +
         ", fence batches: a freed block is reusable once its batch closed, the GPU passed the batch's fence "
         "and a later close polled (async frees: at once on their stream until the list closes)";
}

}  // namespace

int run_trace_summary(const std::string& path, std::size_t top_sites, ToolStreams io) {
  Trace trace;
  if (!load(path, &trace, io)) return kExitBadTrace;
  TraceSummary s = summarize(trace);
  Symbolizer symbols(trace);
  symbols.resolve(site_addresses(s, top_sites));
  std::ostream& o = io.out;
  char line[256];
  o << "trace " << printable(path) << ": pid " << trace.header.pid;
  if (trace.header.rank >= 0) o << ", rank " << trace.header.rank;
  o << ", format version " << trace.header.version << (trace.compressed ? ", zstd" : "") << "\n";
  o << "duration " << format_duration(s.duration_ns) << ", " << s.events << " events, " << s.threads
    << " threads, " << s.devices << " devices" << (trace.clean_end ? "" : " (cut short)") << "\n\n";
  write_oom_dump_summary(trace, s, symbols, top_sites, o);
  o << "events\n";
  for (std::size_t k = 1; k < s.count_by_kind.size(); ++k)
    if (s.count_by_kind[k]) {
      std::snprintf(line, sizeof line, "  %-14s %12llu\n", event_kind_name(EventKind(k)),
                    static_cast<unsigned long long>(s.count_by_kind[k]));
      o << line;
    }
  o << "\nbytes\n";
  o << "  allocated      " << format_size(s.bytes_allocated) << "\n";
  o << "  freed          " << format_size(s.bytes_freed) << "\n";
  o << "  live at end    " << format_size(s.live_at_end) << " in " << s.blocks_live_at_end << " blocks\n";
  o << "  peak live      " << format_size(s.peak_live) << " at " << format_duration(s.peak_live_time_ns) << "\n";
  o << "  peak reserved  " << format_size(s.peak_reserved) << " at "
    << format_duration(s.peak_reserved_time_ns) << (s.reserved_from_maps ? "" : " (no map events: = live)")
    << "\n";
  if (s.unmatched_frees) o << "  frees of unknown addresses: " << s.unmatched_frees << "\n";
  o << "\nsizes\n";
  for (int i = 0; i < 64; ++i)
    if (s.size_histogram[i]) {
      std::snprintf(line, sizeof line, "  %10s - %-10s %12llu\n", format_size(i ? 1ull << i : 0).c_str(),
                    format_size(i < 63 ? (1ull << (i + 1)) - 1 : ~0ull).c_str(),
                    static_cast<unsigned long long>(s.size_histogram[i]));
      o << line;
    }
  o << "\nlifetimes (median " << format_duration(s.median_lifetime_ns) << ")\n";
  for (int i = 0; i < 10; ++i)
    if (s.lifetime_histogram[i]) {
      std::snprintf(line, sizeof line, "  %-12s %12llu\n", kLifetimeBucketNames[i],
                    static_cast<unsigned long long>(s.lifetime_histogram[i]));
      o << line;
    }
  o << "\ntop allocation sites by peak live bytes\n";
  if (trace.header.stack_depth == 0)
    o << "  (no stacks recorded: set GPUSHIM_TRACE_STACK=16 when recording"
      << ((trace.header.flags & 1) ? "; libunwind was missing" : "") << ")\n";
  const std::vector<std::string> labels = site_labels(s.sites, top_sites, symbols);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const AllocationSite& site = s.sites[i];
    std::snprintf(line, sizeof line, "  #%-3zu peak %-12s total %-12s %8llu allocations\n", i + 1,
                  format_size(site.peak_live).c_str(), format_size(site.bytes).c_str(),
                  static_cast<unsigned long long>(site.count));
    o << line;
    // Module paths come from the trace: escaped, so a hostile one cannot forge lines.
    o << "       at " << printable(labels[i], 1024) << "\n";
    // The whole stack, innermost first; '>' marks the frame the site is named after.
    for (std::size_t f = 0; f < site.frames.size(); ++f)
      o << (f == site.label_frame ? "        > " : "          ")
        << printable(symbols.lookup(site.frames[f]).text(), 1024) << "\n";
  }
  return 0;
}

int run_trace_report(const std::string& path, const std::string& html_path, ToolStreams io) {
  Trace trace;
  if (!load(path, &trace, io)) return kExitBadTrace;
  TraceSummary s = summarize(trace);
  Symbolizer symbols(trace);
  symbols.resolve(site_addresses(s, s.sites.size()));
  std::string title = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
  if (!write_file(html_path, render_html_report(trace, s, symbols, title), io)) return 1;
  io.err << "gpushim: wrote " << printable(html_path) << "\n";
  return 0;
}

int run_trace_export(const std::string& path, const std::string& format, const std::string& json_path,
                     ToolStreams io) {
  if (format != "chrome" && format != "torch-snapshot") {
    io.err << "gpushim: unknown export format '" << printable(format) << "' (known: chrome, torch-snapshot)\n";
    return 1;
  }
  Trace trace;
  if (!load(path, &trace, io)) return kExitBadTrace;
  TraceSummary s = summarize(trace);
  if (format == "torch-snapshot") {
    Symbolizer symbols(trace);
    if (!write_file(json_path, torch_snapshot(trace, s, symbols), io)) return 1;
    io.err << "gpushim: wrote " << json_path
           << " (python -m torch.cuda._memory_viz trace_plot " << json_path << " -o out.html)\n";
    return 0;
  }
  Symbolizer symbols(trace);
  symbols.resolve(site_addresses(s, s.sites.size()));
  std::ofstream f(json_path, std::ios::binary | std::ios::trunc);
  write_chrome_trace(trace, s, symbols, f);
  f.close();
  if (!f) {
    io.err << "gpushim: cannot write " << printable(json_path) << "\n";
    return 1;
  }
  io.err << "gpushim: wrote " << printable(json_path) << " (open it in https://ui.perfetto.dev)\n";
  return 0;
}

int run_trace_replay(const std::string& path, const std::string& backend, ToolStreams io, const GpuLag& lag,
                     const ReplayCaches& caches) {
  std::vector<const BackendInfo*> backends;
  if (backend == "all") {
    backends = replayable_backends();
  } else {
    const BackendInfo* info = find_backend(backend);
    if (!info) {
      io.err << "gpushim: unknown backend '" << printable(backend) << "'\n";
      return 1;
    }
    if (!info->factory) {
      io.err << "gpushim: backend '" << backend << "' calls the driver and cannot replay on host memory\n";
      return 1;
    }
    backends.push_back(info);
  }
  Trace trace;
  if (!load(path, &trace, io)) return kExitBadTrace;
  char line[256];
  if (lag.any()) io.out << describe_lag(lag) << "\n";
  if (caches.thread_caches)
    io.out << "with per-thread caches" << (caches.large_slots ? " and large slots" : "")
           << ", each trace thread on its own thread\n";
  std::snprintf(line, sizeof line, "%-12s %14s %14s %14s %8s %10s", "backend", "peak reserved",
                "peak live", "fragmentation", "failed", "ns/op");
  io.out << line << (lag.any() ? "   peak waiting\n" : "\n");
  for (const BackendInfo* info : backends) {
    ReplayProgress progress;
    if (io.progress && trace.events.size() >= kProgressMinEvents)
      progress = [&io, info](std::uint64_t done, std::uint64_t total) {
        io.err << "gpushim: replaying on " << info->name << ": " << done << " / " << total << " events\n";
      };
    ReplayResult r = replay_trace(trace, *info, progress, lag, caches);
    if (!r.refusal.empty()) {
      io.err << "gpushim: " << printable(path) << ": cannot replay: " << r.refusal << "\n";
      return kExitBadTrace;
    }
    std::snprintf(line, sizeof line, "%-12s %14s %14s %14.3f %8llu %10.1f", r.backend.c_str(),
                  format_size(r.peak_reserved).c_str(), format_size(r.peak_live).c_str(), r.fragmentation,
                  static_cast<unsigned long long>(r.failed), r.ns_per_operation);
    io.out << line;
    if (lag.any()) {
      std::snprintf(line, sizeof line, " %14s", format_size(r.peak_waiting).c_str());
      io.out << line;
    }
    io.out << "\n";
    if (r.host_out_of_memory || r.host_failed)
      io.err << "gpushim: replay on " << r.backend << ": this machine ran out of memory, not the backend ("
             << (r.host_out_of_memory ? "std::bad_alloc; the replay stopped early"
                                      : std::to_string(r.host_failed) + " allocations lost to failed mmap")
             << "); the row above undercounts: raise `ulimit -v` or replay on a bigger machine\n";
    if (r.provider_misuse)
      io.err << "gpushim: " << r.backend << " broke the VMM rules " << r.provider_misuse
             << " times during the replay\n";
  }
  return 0;
}

int run_trace_compress(const std::string& path, const std::string& output, ToolStreams io) {
  // The file is read once: checked for zstd, parsed (never compress a damaged trace silently), packed.
  std::vector<unsigned char> raw;
  TraceError error;
  if (!read_file_bytes(path, &raw, &error, read_progress(path, io))) {
    report_read(path, false, Trace{}, error, io);
    return kExitBadTrace;
  }
  if (is_zstd(raw.data(), raw.size())) {
    io.err << "gpushim: " << printable(path) << " is already compressed\n";
    return 1;
  }
  Trace trace;
  bool ok = parse_trace(raw.data(), raw.size(), &trace, &error, read_progress(path, io));
  if (!report_read(path, ok, trace, error, io)) return kExitBadTrace;
  std::vector<unsigned char> packed;
  std::string message;
  if (!compress_zstd(raw, &packed, &message)) {
    io.err << "gpushim: compression failed: " << message << "\n";
    return 1;
  }
  if (!write_file(output, std::string(packed.begin(), packed.end()), io)) return 1;
  io.err << "gpushim: wrote " << printable(output) << " (" << format_size(packed.size()) << ", "
         << format_size(raw.size()) << " uncompressed)\n";
  return 0;
}

}  // namespace gpushim::tracing
