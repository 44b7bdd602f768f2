#include "analysis/trace_chrome_export.h"

#include <cstdio>
#include <nlohmann/json.hpp>

namespace gpushim::tracing {
namespace {

// The format's timestamps are microseconds; fractions keep our nanoseconds.
double us(std::uint64_t ns) { return double(ns) / 1000.0; }

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

void write_chrome_trace(const Trace& trace, const TraceSummary& s, std::ostream& out) {
  using nlohmann::json;
  const int pid = int(trace.header.pid);
  // Written one event at a time: a trace of millions of events never becomes one JSON tree in memory.
  bool first = true;
  auto emit = [&](const json& event) {
    out << (first ? "\n" : ",\n") << event.dump();
    first = false;
  };
  out << "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[";
  emit({{"ph", "M"}, {"name", "process_name"}, {"pid", pid}, {"tid", 0},
        {"args", {{"name", "gpushim trace, pid " + std::to_string(pid)}}}});
  for (const MemorySample& m : s.samples)
    emit({{"ph", "C"}, {"name", "memory"}, {"pid", pid}, {"tid", 0}, {"ts", us(m.time_ns)},
          {"args", {{"live_bytes", m.live}, {"reserved_bytes", m.reserved}}}});
  for (const Lifetime& l : s.lifetimes)
    emit({{"ph", "X"}, {"cat", "allocation"}, {"name", "alloc " + format_size(l.size)}, {"pid", pid},
          {"tid", l.thread_id}, {"ts", us(l.start_ns)}, {"dur", us(l.end_ns - l.start_ns)},
          {"args", {{"size", l.size}, {"address", hex(l.address)}, {"device", l.device},
                    {"freed", l.freed}, {"site", l.site}}}});
  for (const TraceEvent& e : trace.events) {
    if (e.kind != EventKind::alloc_failed && e.kind != EventKind::out_of_memory &&
        e.kind != EventKind::cache_release)
      continue;
    emit({{"ph", "i"}, {"s", "p"}, {"cat", event_kind_name(e.kind)},
          {"name", std::string(event_kind_name(e.kind)) + " " + format_size(e.size)}, {"pid", pid},
          {"tid", e.thread_id}, {"ts", us(e.time_ns)},
          {"args", {{"size", e.size}, {"device", e.device}, {"backend", backend_name(e.backend)}}}});
  }
  out << "\n]}\n";
}

}  // namespace gpushim::tracing
