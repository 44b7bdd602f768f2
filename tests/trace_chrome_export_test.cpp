// The Chrome/Perfetto export is drawn as meant: Perfetto's JSON importer needs the slices of one
// track to nest (a slice that starts inside another must end inside it too), counters per device.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "tests/trace_test_support.h"
#include "analysis/trace_chrome_export.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

using nlohmann::json;

json export_of(const Trace& trace) {
  TraceSummary s = summarize(trace);
  Symbolizer symbols(trace);
  std::vector<std::uint64_t> frames;
  for (const AllocationSite& site : s.sites) frames.insert(frames.end(), site.frames.begin(), site.frames.end());
  symbols.resolve(frames);
  std::ostringstream out;
  write_chrome_trace(trace, s, symbols, out);
  return json::parse(out.str());
}

// Nanoseconds as a viewer reads them back from the microsecond fields.
std::int64_t ns(const json& microseconds) { return std::llround(microseconds.get<double>() * 1000.0); }

// The nesting rule, per (pid, tid) track: walking the slices by start (longer first on a tie), each
// slice either starts after the enclosing open slice has ended, or ends no later than it. Returns how
// many slices break it, and the first such pair in `example`.
std::size_t nesting_violations(const json& trace, std::string* example = nullptr) {
  std::map<std::pair<int, std::int64_t>, std::vector<std::pair<std::int64_t, std::int64_t>>> tracks;
  for (const json& e : trace["traceEvents"])
    if (e["ph"] == "X")
      tracks[{e["pid"].get<int>(), e["tid"].get<std::int64_t>()}].push_back({ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])});
  std::size_t violations = 0;
  for (auto& [track, slices] : tracks) {
    std::sort(slices.begin(), slices.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : a.second > b.second;
    });
    std::vector<std::int64_t> open_ends;
    for (const auto& [start, end] : slices) {
      while (!open_ends.empty() && open_ends.back() <= start) open_ends.pop_back();
      if (!open_ends.empty() && end > open_ends.back()) {
        if (violations++ == 0 && example)
          *example = "track " + std::to_string(track.first) + "/" + std::to_string(track.second) + ": [" +
                     std::to_string(start) + ", " + std::to_string(end) + ") overlaps the open slice ending at " +
                     std::to_string(open_ends.back());
        continue;
      }
      open_ends.push_back(end);
    }
  }
  return violations;
}

TEST(TraceChromeExport, TheNestingCheckCatchesOverlappingSlices) {
  // The check itself: slices that overlap without nesting on one track are caught, nested ones are not.
  json bad = {{"traceEvents", json::array({{{"ph", "X"}, {"pid", 1}, {"tid", 1}, {"ts", 0.0}, {"dur", 2.0}},
                                           {{"ph", "X"}, {"pid", 1}, {"tid", 1}, {"ts", 1.0}, {"dur", 2.0}}})}};
  EXPECT_EQ(nesting_violations(bad), 1u);
  json nested = {{"traceEvents", json::array({{{"ph", "X"}, {"pid", 1}, {"tid", 1}, {"ts", 0.0}, {"dur", 3.0}},
                                              {{"ph", "X"}, {"pid", 1}, {"tid", 1}, {"ts", 1.0}, {"dur", 2.0}},
                                              {{"ph", "X"}, {"pid", 1}, {"tid", 2}, {"ts", 2.0}, {"dur", 2.0}}})}};
  EXPECT_EQ(nesting_violations(nested), 0u);
}

// Blocks of one thread whose lifetimes interleave (a, b, free a, c, free b, ...): the layout that made
// half of the bundled trace's slices overlap on their thread's track.
Trace interleaved_trace(int blocks, int devices) {
  Trace t;
  std::uint64_t time = 0;
  for (int i = 0; i < blocks; ++i) {
    TraceEvent e{};
    e.kind = EventKind::alloc;
    e.time_ns = time += 1000;
    e.address = 0x7f0000000000 + std::uint64_t(i) * 0x100000;
    e.size = std::uint64_t(i + 1) << 20;
    e.thread_id = 7;
    e.device = i % devices;
    t.events.push_back(e);
  }
  // Frees in the same order as the allocations, each after the next two allocations.
  std::vector<TraceEvent> with_frees;
  time = 0;
  for (int i = 0; i < blocks + 2; ++i) {
    if (i < blocks) {
      TraceEvent a = t.events[std::size_t(i)];
      a.time_ns = time += 1000;
      with_frees.push_back(a);
    }
    if (i >= 2) {
      TraceEvent f = t.events[std::size_t(i - 2)];
      f.kind = EventKind::free;
      f.time_ns = time += 1000;
      with_frees.push_back(f);
    }
  }
  t.events = with_frees;
  return t;
}

TEST(TraceChromeExport, OverlappingLifetimesOfOneThreadNestOnTheirTracks) {
  json j = export_of(interleaved_trace(200, 1));
  std::string example;
  EXPECT_EQ(nesting_violations(j, &example), 0u) << example;
  std::size_t slices = 0;
  std::set<std::int64_t> lanes;
  for (const json& e : j["traceEvents"])
    if (e["ph"] == "X") ++slices, lanes.insert(e["tid"].get<std::int64_t>());
  EXPECT_EQ(slices, 200u);
  EXPECT_EQ(lanes.size(), 3u) << "as many lanes as blocks live at once (3), not one per block";
}

TEST(TraceChromeExport, EachDeviceIsAProcessWithItsOwnCounters) {
  Trace t = interleaved_trace(10, 2);  // even blocks on device 0, odd on device 1
  json j = export_of(t);
  std::map<int, std::string> process_names;
  std::map<int, std::uint64_t> peak_live;
  std::map<int, std::set<std::uint64_t>> sizes;
  for (const json& e : j["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "process_name") process_names[e["pid"]] = e["args"]["name"];
    if (e["ph"] == "C" && e["name"] == "live bytes")
      peak_live[e["pid"]] = std::max<std::uint64_t>(peak_live[e["pid"]], e["args"]["bytes"]);
    if (e["ph"] == "X") sizes[e["pid"]].insert(e["args"]["size"].get<std::uint64_t>());
  }
  ASSERT_EQ(process_names.size(), 2u);
  EXPECT_EQ(process_names[1], "device 0 (pid 0)");
  EXPECT_EQ(process_names[2], "device 1 (pid 0)");
  // Device 0 holds blocks 1, 3, 5, 7, 9 MiB; at most two of its own at once (frees come two later,
  // and every other block is on the other device): 9 + 7 MiB.
  EXPECT_EQ(sizes[1], (std::set<std::uint64_t>{1 << 20, 3 << 20, 5 << 20, 7 << 20, 9 << 20}));
  EXPECT_EQ(peak_live[1], 16u << 20);
  EXPECT_EQ(peak_live[2], 18u << 20);  // 10 + 8 MiB
  EXPECT_EQ(nesting_violations(j), 0u);
}

TEST(TraceChromeExport, SyntheticTraceHasReservedCountersAndInstants) {
  std::string dir = testing::make_temp_dir();
  ASSERT_TRUE(testing::write_synthetic_trace(dir + "/s.trace"));
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_export(dir + "/s.trace", "chrome", dir + "/s.json", {out, err, false}), 0) << err.str();
  std::ifstream f(dir + "/s.json");
  json j = json::parse(f);
  std::uint64_t reserved = 0;
  int instants = 0;
  for (const json& e : j["traceEvents"]) {
    if (e["ph"] == "C" && e["name"] == "reserved bytes")
      reserved = std::max<std::uint64_t>(reserved, e["args"]["bytes"]);
    if (e["ph"] == "i") {
      ++instants;
      EXPECT_EQ(e["tid"], 1) << "instants have their own track, apart from the slices";
    }
  }
  EXPECT_EQ(reserved, testing::kSyntheticPeakReserved);
  EXPECT_EQ(instants, 3);
}

// The bundled PyTorch trace: 5,898 of its 11,738 slices overlapped without nesting when they were
// laid on their thread's track.
TEST(TraceChromeExport, BundledTorchTraceNests) {
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(std::string(GPUSHIM_TEST_DATA_DIR) + "/torch_transformer.trace.zst", &trace, &error))
      << error.message;
  json j = export_of(trace);
  std::size_t slices = 0;
  for (const json& e : j["traceEvents"]) slices += e["ph"] == "X";
  EXPECT_EQ(slices, summarize(trace).lifetimes.size());
  std::string example;
  EXPECT_EQ(nesting_violations(j, &example), 0u) << example;
}

}  // namespace
}  // namespace gpushim::tracing
