// The recorder writes what the reader reads back: every event of every thread, in each thread's order,
// with stacks and a module map that resolves them; and a file cut after a flush is still readable.
#include <gtest/gtest.h>

#include <map>
#include <thread>

#include "tests/trace_test_support.h"
#include "analysis/trace_analysis.h"
#include "analysis/trace_reader.h"
#include "analysis/trace_symbolizer.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

TEST(TraceRoundTrip, EveryEventOfEveryThreadComesBack) {
  std::string path = make_temp_dir() + "/threads.trace";
  ASSERT_TRUE(start(path.c_str(), 0));
  constexpr int kThreads = 8;
  constexpr std::uint64_t kPerThread = 20000;  // > one 64 KiB buffer: several flushes per thread
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([t] {
      for (std::uint64_t i = 0; i < kPerThread; ++i)
        record(i % 2 ? EventKind::free : EventKind::alloc, t, 0x100 + t,
               (std::uint64_t(t) << 40) | ((i / 2) << 8), 256 * (i / 2 + 1), BackendId::slab);
    });
  for (auto& th : pool) th.join();
  stop();

  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.offset << ": " << error.message;
  EXPECT_TRUE(trace.clean_end);
  EXPECT_EQ(trace.header.version, format::kVersion);
  ASSERT_EQ(trace.events.size(), kThreads * kPerThread);
  std::map<std::int32_t, std::uint64_t> next;  // device == thread number here
  std::map<std::int32_t, std::uint32_t> tid;
  for (const TraceEvent& e : trace.events) {
    std::uint64_t i = next[e.device]++;
    ASSERT_EQ(e.kind, i % 2 ? EventKind::free : EventKind::alloc);
    ASSERT_EQ(e.address, (std::uint64_t(e.device) << 40) | ((i / 2) << 8));
    ASSERT_EQ(e.size, 256 * (i / 2 + 1));
    ASSERT_EQ(e.stream, 0x100u + std::uint64_t(e.device));
    ASSERT_EQ(e.backend, BackendId::slab);
    if (!tid.count(e.device)) tid[e.device] = e.thread_id;
    ASSERT_EQ(tid[e.device], e.thread_id) << "a thread's events carry its id";
  }
  EXPECT_EQ(tid.size(), std::size_t(kThreads));
  for (std::size_t i = 1; i < trace.events.size(); ++i)
    ASSERT_LE(trace.events[i - 1].time_ns, trace.events[i].time_ns);
}

TEST(TraceRoundTrip, PathExpandsPidAndRank) {
  char out[256];
  setenv("RANK", "3", 1);
  ASSERT_TRUE(expand_trace_path("/tmp/t.%p.%r.%%", out, sizeof out));
  unsetenv("RANK");
  EXPECT_EQ(std::string(out), "/tmp/t." + std::to_string(getpid()) + ".3.%");
  EXPECT_FALSE(expand_trace_path("/a/very/long/path", out, 8));
}

__attribute__((noinline)) void allocate_from_known_site() {
  record(EventKind::alloc, 0, 0, 0x5000, 4096, BackendId::vmm);
  asm volatile("" ::: "memory");  // keep this a real frame, not a tail call
}

TEST(TraceRoundTrip, StacksResolveToTheAllocatingFunction) {
  std::string path = make_temp_dir() + "/stacks.trace";
  ASSERT_TRUE(start(path.c_str(), 8));
  allocate_from_known_site();
  stop();
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.message;
  if (trace.header.flags & 1) GTEST_SKIP() << "libunwind.so.8 is not installed: stacks are off";
  ASSERT_EQ(trace.events.size(), 1u);
  ASSERT_GT(trace.events[0].frame_count, 1u);
  ASSERT_FALSE(trace.modules.empty());
  std::uint64_t first = trace.frames[trace.events[0].first_frame];
  ASSERT_NE(trace.module_of(first), nullptr);
  Symbolizer symbols(trace);
  symbols.resolve({first});
  EXPECT_NE(symbols.lookup(first).text().find("allocate_from_known_site"), std::string::npos)
      << symbols.lookup(first).text();
}

TEST(TraceRoundTrip, AFileCutAfterAFlushReadsUpToThatFlush) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(write_synthetic_trace(dir + "/whole.trace"));
  std::vector<unsigned char> bytes = read_bytes(dir + "/whole.trace");
  // Drop the end chunk (24-byte header + 8-byte end record): what a kill after the last flush leaves.
  bytes.resize(bytes.size() - 32);
  write_bytes(dir + "/killed.trace", bytes);
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(dir + "/killed.trace", &trace, &error)) << error.message;
  EXPECT_FALSE(trace.clean_end);
  EXPECT_EQ(trace.events.size(), 13u);
}

}  // namespace
}  // namespace gpushim::tracing
