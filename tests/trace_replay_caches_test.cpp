// `gpushim trace replay --thread-caches/--large-slots`: the preloaded library's per-thread caches in front
// of the backend, each trace thread replayed on a thread of its own. A backend that logs the calls that
// reach it (and from which thread) shows that the caches sit in front and that the threads are the trace's.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "analysis/trace_replay.h"
#include "analysis/trace_tool_commands.h"
#include "tests/forwarding_allocator.h"
#include "tests/trace_test_support.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

constexpr std::uint64_t kKiB = 1ull << 10;

struct Reached {
  std::uint64_t bytes;
  std::thread::id thread;
};
std::mutex g_lock;
std::vector<Reached>* g_reached = nullptr;

class ThreadLoggingAllocator : public gpushim::testing::ForwardingAllocator {
 public:
  using gpushim::testing::ForwardingAllocator::ForwardingAllocator;
  const char* name() const noexcept override { return "thread-logging"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override {
    {
      std::lock_guard<std::mutex> guard(g_lock);
      g_reached->push_back({bytes, std::this_thread::get_id()});
    }
    return inner().allocate(bytes, stream);
  }
};

std::unique_ptr<Allocator> logging_vmm(MemoryProvider& provider, const Settings& settings) {
  return std::make_unique<ThreadLoggingAllocator>(find_backend("vmm")->factory(provider, settings));
}
const BackendInfo kLogging{"thread-logging", BackendId::unknown, &logging_vmm, {}, "vmm, with its allocations logged"};

TraceEvent event(EventKind kind, std::uint32_t thread, std::uint64_t address, std::uint64_t size) {
  TraceEvent e{};
  e.kind = kind;
  e.thread_id = thread;
  e.address = address;
  e.size = size;
  return e;
}

// `pairs` times on `thread`: allocate `size` at a new address, free it.
void add_pairs(Trace* trace, std::uint32_t thread, int pairs, std::uint64_t size) {
  static std::uint64_t next_address = 0x100000000ull;
  for (int k = 0; k < pairs; ++k) {
    const std::uint64_t address = next_address += 0x10000000ull;
    trace->events.push_back(event(EventKind::alloc, thread, address, size));
    trace->events.push_back(event(EventKind::free, thread, address, size));
  }
}

std::vector<Reached> replay_logged(const Trace& trace, const ReplayCaches& caches, ReplayResult* result = nullptr) {
  std::vector<Reached> reached;
  g_reached = &reached;
  ReplayResult r = replay_trace(trace, kLogging, {}, {}, caches);
  g_reached = nullptr;
  if (result) *result = r;
  return reached;
}

TEST(ReplayCaches, TheCachesServeRepeatedSizesInFrontOfTheBackend) {
  Trace trace;
  add_pairs(&trace, 7, 100, 64 * kKiB);
  EXPECT_EQ(replay_logged(trace, {}).size(), 100u) << "without caches every allocation reaches the backend";
  ReplayCaches caches;
  caches.thread_caches = true;
  EXPECT_EQ(replay_logged(trace, caches).size(), 1u) << "a freed 64 KiB block is taken back from the cache";
  // Above 1 MiB only the large slots keep a block.
  Trace large;
  add_pairs(&large, 7, 10, 4 * kMiB);
  EXPECT_EQ(replay_logged(large, caches).size(), 10u);
  caches.large_slots = true;
  EXPECT_EQ(replay_logged(large, caches).size(), 1u);
}

TEST(ReplayCaches, EachTraceThreadReplaysOnAThreadOfItsOwn) {
  Trace trace;
  for (int round = 0; round < 5; ++round) {  // interleaved, sizes never repeated: every call is a miss
    add_pairs(&trace, 11, 1, (2 + 2 * round) * kMiB);
    add_pairs(&trace, 22, 1, (3 + 2 * round) * kMiB);
  }
  ReplayCaches caches;
  caches.thread_caches = true;
  const std::vector<Reached> reached = replay_logged(trace, caches);
  ASSERT_EQ(reached.size(), 10u);
  std::map<bool, std::set<std::thread::id>> by_trace_thread;  // odd MiB: thread 22
  for (const Reached& r : reached) by_trace_thread[(r.bytes / kMiB) % 2 == 1].insert(r.thread);
  ASSERT_EQ(by_trace_thread[false].size(), 1u) << "trace thread 11's calls ran on several threads";
  ASSERT_EQ(by_trace_thread[true].size(), 1u) << "trace thread 22's calls ran on several threads";
  EXPECT_NE(*by_trace_thread[false].begin(), *by_trace_thread[true].begin());
  EXPECT_EQ(by_trace_thread[false].count(std::this_thread::get_id()), 0u);

  for (const Reached& r : replay_logged(trace, {}))
    EXPECT_EQ(r.thread, std::this_thread::get_id()) << "without caches the replay runs on the caller's thread";
}

TEST(ReplayCaches, TheCommandSaysWhatSitsInFront) {
  const std::string path = make_temp_dir() + "/synthetic.trace";
  ASSERT_TRUE(write_synthetic_trace(path));
  std::ostringstream out, err;
  ReplayCaches caches;
  caches.thread_caches = true;
  caches.large_slots = true;
  ASSERT_EQ(run_trace_replay(path, "vmm", {out, err}, {}, caches), 0) << err.str();
  EXPECT_NE(out.str().find("with per-thread caches and large slots"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("vmm"), std::string::npos) << out.str();
}

}  // namespace
}  // namespace gpushim::tracing
