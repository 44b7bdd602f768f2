#include "analysis/trace_chrome_export.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
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

// Track ids inside a device's process: the events track, then the lanes.
constexpr int kEventsTrack = 1;
constexpr int kFirstLane = 2;

}  // namespace

void write_chrome_trace(const Trace& trace, const TraceSummary& s, const Symbolizer& symbols, std::ostream& out) {
  using nlohmann::json;
  // Written one event at a time: a trace of millions of events never becomes one JSON tree in memory.
  bool first = true;
  auto emit = [&](const json& event) {
    out << (first ? "\n" : ",\n") << event.dump();
    first = false;
  };
  out << "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[";

  // Devices in order of number; each is one process of the export, numbered from 1.
  std::map<std::int32_t, int> process_of;
  for (const TraceEvent& e : trace.events) process_of.emplace(e.device, 0);
  if (process_of.empty()) process_of.emplace(0, 0);
  int next_process = 1;
  for (auto& [device, pid] : process_of) {
    pid = next_process++;
    const std::string name = (device < 0 ? std::string("no device") : "device " + std::to_string(device)) +
                             " (pid " + std::to_string(trace.header.pid) + ")";
    emit({{"ph", "M"}, {"name", "process_name"}, {"pid", pid}, {"tid", 0}, {"args", {{"name", name}}}});
    emit({{"ph", "M"}, {"name", "process_sort_index"}, {"pid", pid}, {"tid", 0}, {"args", {{"sort_index", pid}}}});
    emit({{"ph", "M"}, {"name", "thread_name"}, {"pid", pid}, {"tid", kEventsTrack},
          {"args", {{"name", "failed allocations, out of memory, cache releases"}}}});
  }

  // Counters per device: live bytes from the lifetimes (the pairing rule of summarize()), reserved bytes
  // from map and unmap events.
  struct Change {
    std::uint64_t time;
    std::int32_t device;
    std::int64_t live, reserved;
  };
  std::vector<Change> changes;
  for (const Lifetime& l : s.lifetimes) {
    changes.push_back({l.start_ns, l.device, std::int64_t(l.size), 0});
    if (l.freed) changes.push_back({l.end_ns, l.device, -std::int64_t(l.size), 0});
  }
  for (const TraceEvent& e : trace.events) {
    if (e.kind == EventKind::map) changes.push_back({e.time_ns, e.device, 0, std::int64_t(e.size)});
    if (e.kind == EventKind::unmap) changes.push_back({e.time_ns, e.device, 0, -std::int64_t(e.size)});
  }
  std::stable_sort(changes.begin(), changes.end(), [](const Change& a, const Change& b) { return a.time < b.time; });
  std::map<std::int32_t, std::pair<std::int64_t, std::int64_t>> level;  // device -> (live, reserved)
  for (std::size_t i = 0; i < changes.size(); ++i) {
    auto& [live, reserved] = level[changes[i].device];
    live += changes[i].live;
    reserved = std::max<std::int64_t>(0, reserved + changes[i].reserved);
    // One sample per device and time: the level after every change at that instant.
    const bool last_at_this_time = i + 1 == changes.size() || changes[i + 1].time != changes[i].time ||
                                   changes[i + 1].device != changes[i].device;
    if (!last_at_this_time) continue;
    const int pid = process_of[changes[i].device];
    emit({{"ph", "C"}, {"name", "live bytes"}, {"pid", pid}, {"ts", us(changes[i].time)},
          {"args", {{"bytes", live}}}});
    if (s.reserved_from_maps)
      emit({{"ph", "C"}, {"name", "reserved bytes"}, {"pid", pid}, {"ts", us(changes[i].time)},
            {"args", {{"bytes", reserved}}}});
  }

  // Allocation slices, lane by lane per device.
  const std::vector<std::string> names = site_names(s.sites, s.sites.size(), symbols);
  const std::vector<std::string> labels = site_labels(s.sites, s.sites.size(), symbols);
  std::vector<std::string> site_stacks(s.sites.size());
  for (std::size_t i = 0; i < s.sites.size(); ++i)
    for (std::uint64_t f : s.sites[i].frames) site_stacks[i] += symbols.lookup(f).text() + "\n";
  for (const auto& [device, pid] : process_of) {
    std::vector<const Lifetime*> blocks;
    for (const Lifetime& l : s.lifetimes)
      if (l.device == device) blocks.push_back(&l);
    const std::vector<int> lanes = assign_lanes(blocks);
    const int lane_count = lanes.empty() ? 0 : *std::max_element(lanes.begin(), lanes.end()) + 1;
    for (int lane = 0; lane < lane_count; ++lane)
      emit({{"ph", "M"}, {"name", "thread_name"}, {"pid", pid}, {"tid", kFirstLane + lane},
            {"args", {{"name", "blocks " + std::to_string(lane + 1)}}}});
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const Lifetime& l = *blocks[i];
      json args = {{"size", l.size}, {"size_text", format_size(l.size)}, {"address", hex(l.address)},
                   {"thread", l.thread_id}, {"freed", l.freed}};
      if (l.site < names.size()) {
        args["site"] = labels[l.site];
        if (!site_stacks[l.site].empty()) args["stack"] = site_stacks[l.site];
      }
      emit({{"ph", "X"}, {"cat", "allocation"},
            {"name", l.site < names.size() ? names[l.site] : "alloc " + format_size(l.size)},
            {"pid", pid}, {"tid", kFirstLane + lanes[i]}, {"ts", us(l.start_ns)}, {"dur", us(l.end_ns - l.start_ns)},
            {"args", args}});
    }
  }

  for (const TraceEvent& e : trace.events) {
    if (e.kind != EventKind::alloc_failed && e.kind != EventKind::out_of_memory &&
        e.kind != EventKind::cache_release)
      continue;
    emit({{"ph", "i"}, {"s", "t"}, {"cat", event_kind_name(e.kind)},
          {"name", std::string(event_kind_name(e.kind)) + " " + format_size(e.size)}, {"pid", process_of[e.device]},
          {"tid", kEventsTrack}, {"ts", us(e.time_ns)},
          {"args", {{"size", e.size}, {"thread", e.thread_id}, {"backend", backend_name(e.backend)}}}});
  }
  out << "\n]}\n";
}

}  // namespace gpushim::tracing
