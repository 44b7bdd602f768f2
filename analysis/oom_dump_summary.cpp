#include "analysis/oom_dump_summary.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

namespace gpushim::tracing {
namespace {

std::string hex(std::uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

}  // namespace

void write_oom_dump_summary(const Trace& trace, const TraceSummary& s, Symbolizer& symbols, std::size_t top,
                            std::ostream& o) {
  if (!trace.is_oom_dump()) return;
  char line[512];
  const TraceEvent* failure = nullptr;
  std::vector<const TraceEvent*> allocs;  // in the order of s.lifetimes
  for (const TraceEvent& e : trace.events) {
    if (e.kind == EventKind::out_of_memory) failure = &e;
    if (is_alloc(e.kind)) allocs.push_back(&e);
  }
  o << "out-of-memory dump";
  if (failure)
    o << ": device " << failure->device << " (" << backend_name(failure->backend) << ") could not allocate "
      << format_size(failure->size) << " on stream " << hex(failure->stream) << ", "
      << format_duration(failure->time_ns) << " after gpushim started";
  o << "\n";
  std::snprintf(line, sizeof line, "  %-6s %-11s %12s %8s %12s %12s %12s %12s %12s\n", "device", "backend", "live",
                "blocks", "reserved", "cached", "largest free", "pending free", "limit");
  o << line;
  for (const DeviceSnapshot& d : trace.device_states) {
    std::snprintf(line, sizeof line, "  %-6d %-11s %12s %8llu %12s %12s %12s %12s %12s\n", d.device,
                  backend_name(d.backend), format_size(d.live_bytes).c_str(),
                  static_cast<unsigned long long>(d.live_blocks), format_size(d.reserved).c_str(),
                  format_size(d.cached).c_str(), format_size(d.largest_free).c_str(),
                  format_size(d.pending_free).c_str(), d.limit ? format_size(d.limit).c_str() : "none");
    o << line;
  }

  const bool stacks = trace.header.stack_depth > 0;
  if (stacks) {
    // Sites by the bytes they held at the failure: the answer to "who holds the memory".
    std::vector<std::size_t> order(s.sites.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return s.sites[a].live > s.sites[b].live; });
    order.resize(std::min(order.size(), top));
    std::vector<std::uint64_t> frames;
    for (std::size_t i : order) frames.insert(frames.end(), s.sites[i].frames.begin(), s.sites[i].frames.end());
    symbols.resolve(frames);
    o << "\ntop holders at the failure, by call site\n";
    for (std::size_t rank = 0; rank < order.size(); ++rank) {
      const AllocationSite& site = s.sites[order[rank]];
      if (site.live == 0) break;
      std::snprintf(line, sizeof line, "  #%-3zu %-12s in %6llu blocks  at ", rank + 1, format_size(site.live).c_str(),
                    static_cast<unsigned long long>(site.count));
      o << line << site_label(site, symbols) << "\n";
    }
  } else {
    o << "\n(no stacks in this dump: set GPUSHIM_OOM_DUMP_STACK=16 to name the call sites of live blocks"
      << ((trace.header.flags & format::kFlagNoUnwinder) ? "; no stack unwinder worked" : "") << ")\n";
  }

  // The largest blocks themselves: size, where, how old.
  std::vector<std::size_t> largest(s.lifetimes.size());
  std::iota(largest.begin(), largest.end(), std::size_t{0});
  std::stable_sort(largest.begin(), largest.end(),
                   [&](std::size_t a, std::size_t b) { return s.lifetimes[a].size > s.lifetimes[b].size; });
  largest.resize(std::min(largest.size(), top));
  const std::uint64_t now = failure ? failure->time_ns : s.duration_ns;
  o << "\nlargest live blocks\n";
  for (std::size_t rank = 0; rank < largest.size(); ++rank) {
    const Lifetime& life = s.lifetimes[largest[rank]];
    const std::uint64_t stream = largest[rank] < allocs.size() ? allocs[largest[rank]]->stream : 0;
    std::snprintf(line, sizeof line, "  #%-3zu %-12s device %d  at %s  stream %s  age %s", rank + 1,
                  format_size(life.size).c_str(), life.device, hex(life.address).c_str(), hex(stream).c_str(),
                  format_duration(now >= life.start_ns ? now - life.start_ns : 0).c_str());
    o << line;
    if (stacks && life.site < s.sites.size() && !s.sites[life.site].frames.empty()) {
      symbols.resolve(s.sites[life.site].frames);
      o << "  from " << site_label(s.sites[life.site], symbols);
    }
    o << "\n";
  }
  o << "\n";
}

}  // namespace gpushim::tracing
