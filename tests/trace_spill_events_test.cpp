// Host spill in traces (docs/trace-format.md, docs/host-spill.md): host memory mapped for spilled blocks
// is recorded as spill_map / spill_unmap, read back as such, and kept out of the device's reserved bytes.
#include <gtest/gtest.h>

#include <string>

#include "tests/trace_test_support.h"
#include "analysis/trace_analysis.h"
#include "analysis/trace_reader.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

constexpr std::uint64_t MiB = 1 << 20;

TEST(TraceSpillEvents, HostMappingsComeBackAsTheirOwnKindAndAreNotDeviceMemory) {
  std::string path = make_temp_dir() + "/spill.trace";
  ASSERT_TRUE(start(path.c_str(), 0));
  record(EventKind::map, 0, 0, 0x10000000, 64 * MiB, BackendId::tiered);
  record(EventKind::alloc, 0, 0, 0x10000000, 64 * MiB, BackendId::tiered);
  record(EventKind::spill_map, 0, 0, 0x90000000, 32 * MiB, BackendId::tiered);
  record(EventKind::alloc, 0, 0, 0x90000000, 32 * MiB, BackendId::tiered);  // the spilled block
  record(EventKind::free, 0, 0, 0x90000000, 32 * MiB, BackendId::tiered);
  record(EventKind::spill_unmap, 0, 0, 0x90000000, 32 * MiB, BackendId::tiered);
  stop();

  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.offset << ": " << error.message;
  ASSERT_EQ(trace.events.size(), 6u);
  EXPECT_EQ(trace.events[2].kind, EventKind::spill_map);
  EXPECT_EQ(trace.events[5].kind, EventKind::spill_unmap);
  EXPECT_EQ(std::string(event_kind_name(EventKind::spill_map)), "spill_map");
  EXPECT_EQ(std::string(event_kind_name(EventKind::spill_unmap)), "spill_unmap");
  const TraceSummary s = summarize(trace);
  EXPECT_EQ(s.peak_reserved, 64 * MiB) << "host memory is not the device's reserve";
  EXPECT_EQ(s.peak_live, 96 * MiB) << "a spilled block is live like any other";
}

}  // namespace
}  // namespace gpushim::tracing
