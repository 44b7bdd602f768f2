// The numbers `gpushim trace summary` prints, on a synthetic trace whose totals are known.
#include <gtest/gtest.h>

#include <sstream>

#include "tests/trace_test_support.h"
#include "analysis/trace_analysis.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

TEST(TraceSummary, SyntheticTraceTotals) {
  std::string path = make_temp_dir() + "/synthetic.trace";
  ASSERT_TRUE(write_synthetic_trace(path));
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.message;
  TraceSummary s = summarize(trace);
  EXPECT_EQ(s.events, 13u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::alloc)], 3u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::alloc_async)], 1u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::free)], 2u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::free_async)], 1u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::alloc_failed)], 1u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::out_of_memory)], 1u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::map)], 2u);
  EXPECT_EQ(s.count_by_kind[std::size_t(EventKind::unmap)], 1u);
  EXPECT_EQ(s.peak_live, kSyntheticPeakLive);
  EXPECT_EQ(s.peak_reserved, kSyntheticPeakReserved);
  EXPECT_TRUE(s.reserved_from_maps);
  EXPECT_EQ(s.bytes_allocated, kSyntheticBytesAllocated);
  EXPECT_EQ(s.live_at_end, kSyntheticLiveAtEnd);
  EXPECT_EQ(s.blocks_live_at_end, 1u);
  EXPECT_EQ(s.unmatched_frees, 0u);
  // Peak live is reached by D's allocation, the 6th allocation-or-free event.
  EXPECT_GE(s.peak_live_time_ns, s.lifetimes[2].start_ns);
  EXPECT_EQ(s.size_histogram[9], 1u);   // 512 B
  EXPECT_EQ(s.size_histogram[20], 1u);  // 1 MiB
  EXPECT_EQ(s.size_histogram[21], 2u);  // 2 MiB, 3 MiB
  EXPECT_EQ(s.lifetime_histogram[9], 1u);  // C never freed
  ASSERT_EQ(s.lifetimes.size(), 4u);
  EXPECT_EQ(s.samples.back().live, kSyntheticLiveAtEnd);
  EXPECT_EQ(s.samples.back().reserved, 4 * kMiB);
}

TEST(TraceSummary, CommandPrintsThePeaks) {
  std::string path = make_temp_dir() + "/synthetic.trace";
  ASSERT_TRUE(write_synthetic_trace(path));
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_summary(path, 10, {out, err, false}), 0) << err.str();
  EXPECT_NE(out.str().find("peak live      5.00 MiB"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("peak reserved  6.00 MiB"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("out_of_memory"), std::string::npos);
}

}  // namespace
}  // namespace gpushim::tracing
