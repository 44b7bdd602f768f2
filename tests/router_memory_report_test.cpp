#include "router/memory_report.h"

#include <gtest/gtest.h>

#include <sstream>


namespace gpushim {
namespace {

std::vector<std::string> fields(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> out;
  for (std::string word; in >> word;) out.push_back(word);
  return out;
}

TEST(StatsTable, HeaderMatchesTheContractCharacterForCharacter) {
  auto lines = format_stats_table({});
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ("gpushim: " + lines[0],
            "gpushim: device backend       allocs      frees     failed  bytes_allocated   peak_live  peak_reserved");
}

// A device whose frees waited for a fence gets one line under the table; one whose frees never waited
// gets none (docs/configuration.md, "The statistics table").
TEST(StatsTable, FencedFreesGetTheirOwnLine) {
  StatsRow fenced;
  fenced.device = 0;
  fenced.backend = "tiered";
  fenced.allocs = fenced.frees = 100;
  fenced.fenced_frees = 40;
  fenced.peak_fence_waiting = 96ull << 20;
  StatsRow unfenced = fenced;
  unfenced.device = 1;
  unfenced.fenced_frees = 0;
  auto lines = format_stats_table({fenced, unfenced});
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[3], "device 0 fenced 40 of 100 frees; peak waiting for a fence 96.00 MiB");
}

// Allocations that found the peak while blocks waited for fences get a line of their own, after the
// fenced line; a device with none gets none.
TEST(StatsTable, AllocationsAtThePeakGetTheirOwnLine) {
  StatsRow row;
  row.device = 0;
  row.backend = "tiered";
  row.allocs = row.frees = 100;
  row.fenced_frees = 100;
  row.peak_fence_waiting = 1ull << 20;
  row.at_peak = 9;
  row.at_peak_taken = 4;
  row.at_peak_waited = 3;
  row.at_peak_past_by_rule = 1;
  row.at_peak_past_after_wait = 1;
  row.at_peak_wait_ns = 12'345'678;
  StatsRow none = row;
  none.device = 1;
  none.at_peak = none.at_peak_taken = none.at_peak_waited = none.at_peak_past_by_rule = 0;
  none.at_peak_past_after_wait = 0;
  auto lines = format_stats_table({row, none});
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_EQ(lines[5],
            "device 0 at the peak while blocks waited for fences: 9 allocations; 4 took blocks other threads got "
            "back, 3 waited for fences, 2 were let past the peak (1 at once by the growth rule, 0 with too "
            "little fenced to wait for, 1 after waiting in vain; 0 of them mapped memory); the waits took 12.3 "
            "ms in all");
}

// Where fenced blocks waited, and what their fences asked the driver: a line for a device whose fences
// completed or whose blocks went back unfenced; none for a device with neither.
TEST(StatsTable, FencesGetTheirOwnLine) {
  StatsRow row;
  row.device = 0;
  row.backend = "tiered";
  row.allocs = row.frees = 1000;
  row.fences.fences = 4;
  row.fences.blocks = 100;
  row.fences.close_to_record_ns = 40'000;
  row.fences.record_to_complete_ns = 1'000'000;
  row.fences.events = {7, 9, 12};  // recorded, shared, queried
  row.fences.driver_polls = 30;
  row.fences.unfenced_blocks = 500;
  row.fences.marked_batches = 6;
  row.fences.marked_blocks_passed = 1200;
  StatsRow none = row;
  none.device = 1;
  none.fences.fences = none.fences.unfenced_blocks = none.fences.marked_batches = 0;
  auto lines = format_stats_table({row, none});
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[3],
            "device 0 fences: 4 found complete, 100 blocks (25.0 a fence); close to record 10.0 us, record to "
            "found complete 250.0 us (means); events 7 recorded, 9 shared, 12 queries in 30 polls; 500 blocks "
            "went back unfenced when the work turned ordered; 6 batches marked, 1200 of their blocks back to "
            "their thread by the marks");
  // Blocks that only went back unfenced: the line, with no fence to divide by.
  row.fences.fences = row.fences.blocks = 0;
  row.fences.close_to_record_ns = row.fences.record_to_complete_ns = 0;
  lines = format_stats_table({row});
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_NE(lines[2].find("0 found complete, 0 blocks (0.0 a fence)"), std::string::npos) << lines[2];
  // Only marked batches (router/marked_batches.h): the line too.
  row.fences.unfenced_blocks = 0;
  lines = format_stats_table({row});
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_NE(lines[2].find("6 batches marked"), std::string::npos) << lines[2];
}

// The provider's maps and unmaps, with the time the driver took: only for a device whose provider was
// counted (GPUSHIM_STATS over a provider backend) and that mapped, gave back or was refused anything.
TEST(StatsTable, MappingLineFollowsWhereTheProviderWasCalled) {
  StatsRow row;
  row.device = 0;
  row.backend = "vmm";
  row.allocs = 10;
  row.frees = 10;
  row.mappings.maps = 3;
  row.mappings.map_bytes = 3ull << 30;
  row.mappings.map_ns = 4'260'000;
  row.mappings.unmaps = 2;
  row.mappings.unmap_bytes = 2ull << 30;
  row.mappings.unmap_ns = 1'500'000;
  row.mappings.refused_maps = 1;
  StatsRow none = row;
  none.device = 1;
  none.mappings = MappingTotals{};
  auto lines = format_stats_table({row, none});
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[3],
            "device 0 mapped 3.00 GiB in 3 calls (4.3 ms), unmapped 2.00 GiB in 2 calls (1.5 ms); 1 maps refused");
}

TEST(StatsTable, RowsParseByWhitespaceAsTestsDo) {
  StatsRow row;
  row.device = 0;
  row.backend = "vmm";
  row.allocs = 1234;
  row.frees = 1230;
  row.failed = 0;
  row.bytes_allocated = 3ull << 29;  // 1.5 GiB
  row.peak_live = 1ull << 30;
  row.peak_reserved = 3ull << 29;
  StatsRow idle;
  idle.device = 1;
  idle.backend = "vmm";
  auto lines = format_stats_table({row, idle});
  ASSERT_EQ(lines.size(), 2u);  // the idle device is left out
  auto f = fields("gpushim: " + lines[1]);
  ASSERT_EQ(f.size(), 12u);
  EXPECT_EQ(f[1], "0");
  EXPECT_EQ(f[2], "vmm");
  EXPECT_EQ(f[3], "1234");
  EXPECT_EQ(f[4], "1230");
  EXPECT_EQ(f[5], "0");
  EXPECT_EQ(f[6] + " " + f[7], "1.50 GiB");  // literals: the parsers of this table read these words
  EXPECT_EQ(f[8] + " " + f[9], "1.00 GiB");
}

TEST(OomReport, NamesEveryQuantityAndTheLargestBlocks) {
  OomReport r;
  r.device = 2;
  r.backend = "tiered";
  r.requested = 1ull << 30;
  r.live_bytes = 10ull << 30;
  r.live_blocks = 7;
  r.reserved = 12ull << 30;
  r.cached = 2ull << 30;
  r.largest_free = 512ull << 20;
  for (int i = 0; i < 3; ++i) r.largest_live.push_back({0x7f0000000000u + i * 0x1000u, (3ull - i) << 30});
  auto lines = format_oom_report(r);
  std::string all;
  for (auto& l : lines) all += l + "\n";
  EXPECT_NE(all.find("device 2"), std::string::npos);
  EXPECT_NE(all.find("tiered"), std::string::npos);
  EXPECT_NE(all.find("requested 1.00 GiB"), std::string::npos);
  EXPECT_NE(all.find("live 10.00 GiB in 7 blocks"), std::string::npos);
  EXPECT_NE(all.find("reserved 12.00 GiB"), std::string::npos);
  EXPECT_NE(all.find("cached 2.00 GiB"), std::string::npos);
  EXPECT_NE(all.find("largest free block 512.00 MiB"), std::string::npos);
  EXPECT_NE(all.find("fragmentation 75.0%"), std::string::npos);
  ASSERT_EQ(lines.size(), 4u + 3u);
  EXPECT_NE(lines[4].find("3.00 GiB at 0x7f0000000000"), std::string::npos);
  EXPECT_EQ(all.find("limit"), std::string::npos);
  EXPECT_EQ(all.find("by device"), std::string::npos);  // one device: no placement line
}

TEST(OomReport, SaysWhichDevicesBackTheMemoryUnderPeers) {
  OomReport r;
  r.backend = "tiered";
  r.placement = "device 0: 1.50 GiB, device 1: 512.00 MiB";
  auto lines = format_oom_report(r);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[3], "  memory mapped by device: device 0: 1.50 GiB, device 1: 512.00 MiB");
}

TEST(OomReport, Fragmentation) {
  EXPECT_DOUBLE_EQ(fragmentation_percent(0, 0), 0.0);
  EXPECT_DOUBLE_EQ(fragmentation_percent(100, 100), 0.0);
  EXPECT_DOUBLE_EQ(fragmentation_percent(100, 25), 75.0);
}

}  // namespace
}  // namespace gpushim
