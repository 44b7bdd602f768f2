// Decorators: StatisticsAllocator, LimitingAllocator, LimitedProvider (the cap one layer down), and
// MappingStatisticsProvider (GPUSHIM_STATS' maps and unmaps).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "allocators/limiting_allocator.h"
#include "allocators/statistics_allocator.h"
#include "allocators/vmm_arena.h"
#include "providers/host_provider.h"
#include "providers/limited_provider.h"
#include "providers/mapping_statistics.h"

namespace gpushim {
namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

std::unique_ptr<Allocator> small_arena(MemoryProvider& provider) {
  VmmArenaOptions o;
  o.reserve = 256 * MiB;
  o.grow_step = MiB;
  o.release_threshold = 64 * MiB;
  return std::make_unique<VmmArena>(provider, o);
}

TEST(StatisticsAllocator, KeepsBytesInUseAndPeakAndPassesTheInnerCountsAndMemoryFields) {
  HostProvider provider(64 * KiB, 4 * MiB);
  StatisticsAllocator stats(small_arena(provider));
  EXPECT_STREQ(stats.name(), "vmm");
  void* a = stats.allocate(1000, 0);
  void* b = stats.allocate(3000, 0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(stats.allocate(64 * MiB, 0), nullptr);
  stats.deallocate(a, 1000, 0);
  void* c = stats.allocate(500, 0);
  ASSERT_NE(c, nullptr);
  AllocatorStats s = stats.stats();
  EXPECT_EQ(s.allocations, 3u);         // the arena's own counts
  EXPECT_EQ(s.deallocations, 1u);
  EXPECT_EQ(s.failed_allocations, 1u);
  EXPECT_EQ(s.bytes_in_use, 3500u);
  EXPECT_EQ(s.peak_bytes_in_use, 4000u);
  EXPECT_EQ(s.bytes_reserved, MiB);                // from the arena
  EXPECT_EQ(s.bytes_reserved, provider.bytes_mapped());
  EXPECT_EQ(s.internal_waste, (3072u - 3000) + (512u - 500));  // a is freed
  EXPECT_EQ(s.bytes_cached, MiB - 3072 - 512);
  stats.deallocate(b, 3000, 0);
  stats.deallocate(c, 500, 0);
  EXPECT_EQ(stats.release_cached(), MiB);
  EXPECT_EQ(stats.stats().bytes_in_use, 0u);
  EXPECT_EQ(stats.stats().peak_bytes_reserved, MiB);
}

// A batch counts out its blocks' requested bytes, though the layers under it may overwrite the array
// (the thread cache rewrites a small block's size to its class).
TEST(StatisticsAllocator, ABatchCountsOutTheBytesItsBlocksWereAskedFor) {
  HostProvider provider(64 * KiB, 4 * MiB);
  StatisticsAllocator stats(small_arena(provider));
  BlockToFree blocks[3] = {{stats.allocate(1000, 0), 1000, 0}, {stats.allocate(3000, 0), 3000, 0},
                           {stats.allocate(500, 0), 500, 0}};
  void* kept = stats.allocate(700, 0);
  ASSERT_NE(kept, nullptr);
  EXPECT_EQ(stats.stats().bytes_in_use, 5200u);
  stats.deallocate_batch(blocks, 3);
  EXPECT_EQ(stats.stats().bytes_in_use, 700u);
  EXPECT_EQ(stats.stats().deallocations, 3u);
  stats.deallocate(kept, 700, 0);
  EXPECT_EQ(stats.stats().bytes_in_use, 0u);
}

TEST(StatisticsAllocator, BytesInUseStayExactUnderManyThreads) {
  HostProvider provider(64 * KiB);
  StatisticsAllocator stats(small_arena(provider));
  constexpr int kThreads = 8, kPairs = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPairs; ++i) {
        std::size_t n = 256 * (1 + (i + t) % 16);
        void* p = stats.allocate(n, 0);
        if (p) stats.deallocate(p, n, 0);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  AllocatorStats s = stats.stats();
  EXPECT_EQ(s.allocations, std::uint64_t{kThreads} * kPairs);
  EXPECT_EQ(s.deallocations, std::uint64_t{kThreads} * kPairs);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_GE(s.peak_bytes_in_use, 256u * 16);
  EXPECT_LE(s.peak_bytes_in_use, std::uint64_t{kThreads} * 256 * 16);
}

TEST(LimitingAllocator, RefusesPastTheCapOnBytesInUseAndRecovers) {
  HostProvider provider(64 * KiB);
  LimitingAllocator limited(small_arena(provider), 10 * KiB);
  void* a = limited.allocate(4000, 0);  // charged 4096
  void* b = limited.allocate(4096, 0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(limited.bytes_in_use(), 8192u);
  EXPECT_EQ(limited.allocate(4096, 0), nullptr);
  void* c = limited.allocate(2048, 0);  // exactly at the cap
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(limited.allocate(1, 0), nullptr);
  EXPECT_EQ(limited.stats().failed_allocations, 2u);
  limited.deallocate(b, 4096, 0);
  void* d = limited.allocate(4096, 0);
  EXPECT_NE(d, nullptr);
  for (auto [p, n] : {std::pair<void*, std::size_t>{a, 4000}, {c, 2048}, {d, 4096}})
    limited.deallocate(p, n, 0);
  EXPECT_EQ(limited.bytes_in_use(), 0u);
  EXPECT_EQ(limited.cap(), 10 * KiB);
}

TEST(LimitingAllocator, RacingThreadsNeverPassTheCap) {
  HostProvider provider(64 * KiB);
  constexpr std::size_t kCap = 64 * KiB;
  LimitingAllocator limited(small_arena(provider), kCap);
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 4000; ++i) {
        void* p = limited.allocate(12 * KiB, 0);
        if (limited.bytes_in_use() > kCap) over = true;
        if (p) limited.deallocate(p, 12 * KiB, 0);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_FALSE(over.load());
  EXPECT_EQ(limited.bytes_in_use(), 0u);
}

TEST(LimitedProvider, CapsWhatABackendCanMapAndCountsItsOwnMappings) {
  HostProvider host(64 * KiB);
  LimitedProvider limited(host, 2 * MiB);
  EXPECT_EQ(limited.granularity(), host.granularity());
  VmmArenaOptions o;
  o.reserve = 64 * MiB;
  o.grow_step = MiB;
  o.release_threshold = 64 * MiB;
  VmmArena arena(limited, o);
  void* a = arena.allocate(MiB, 0);
  void* b = arena.allocate(MiB, 0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(arena.allocate(256, 0), nullptr);
  EXPECT_EQ(limited.bytes_mapped(), 2 * MiB);
  EXPECT_EQ(limited.cap(), 2 * MiB);
  arena.deallocate(a, MiB, 0);
  arena.deallocate(b, MiB, 0);
  arena.release_cached();
  EXPECT_EQ(limited.bytes_mapped(), 0u);
  EXPECT_EQ(host.bytes_mapped(), 0u);
  void* whole = arena.allocate(2 * MiB, 0);
  EXPECT_NE(whole, nullptr);
  arena.deallocate(whole, 2 * MiB, 0);
  EXPECT_EQ(host.misuse_count(), 0u);
}

TEST(LimitedProvider, AFailedInnerMapGivesTheBytesBack) {
  HostProvider host(64 * KiB, 128 * KiB);  // the device has less than the cap
  LimitedProvider limited(host, MiB);
  void* base = limited.reserve(MiB);
  ASSERT_NE(base, nullptr);
  EXPECT_FALSE(limited.map(base, 256 * KiB));
  EXPECT_EQ(limited.bytes_mapped(), 0u);
  EXPECT_TRUE(limited.map(base, 128 * KiB));
  EXPECT_EQ(limited.bytes_mapped(), 128 * KiB);
  limited.unmap(base, 128 * KiB);
  limited.release_reservation(base, MiB);
  EXPECT_EQ(host.misuse_count(), 0u);
}

// What the statistics line reports: calls, bytes and refusals as the backend made them, and only this
// thread's successful maps in its own count (the router's "mapped memory" of one allocation).
TEST(MappingStatisticsProvider, CountsMapsUnmapsAndRefusalsAndThisThreadsMaps) {
  HostProvider host(64 * KiB, 512 * KiB);
  MappingStatisticsProvider counted(host);
  EXPECT_EQ(counted.granularity(), host.granularity());
  void* base = counted.reserve(MiB);
  ASSERT_NE(base, nullptr);
  char* at = static_cast<char*>(base);
  const std::uint64_t mine_before = t_maps_by_this_thread;
  EXPECT_TRUE(counted.map(at, 128 * KiB));
  EXPECT_TRUE(counted.map(at + 128 * KiB, 256 * KiB));
  EXPECT_FALSE(counted.map(at + 384 * KiB, 256 * KiB));  // past the host provider's 512 KiB
  EXPECT_EQ(t_maps_by_this_thread - mine_before, 2u);
  std::thread([&] {
    const std::uint64_t theirs_before = t_maps_by_this_thread;
    EXPECT_TRUE(counted.map(at + 384 * KiB, 64 * KiB));
    EXPECT_EQ(t_maps_by_this_thread - theirs_before, 1u);
    counted.unmap(at + 384 * KiB, 64 * KiB);
  }).join();
  EXPECT_EQ(t_maps_by_this_thread - mine_before, 2u) << "another thread's map counted as this thread's";
  counted.unmap(at, 128 * KiB);
  EXPECT_EQ(counted.bytes_mapped(), 256 * KiB);
  const MappingTotals t = counted.totals();
  EXPECT_EQ(t.maps, 3u);
  EXPECT_EQ(t.map_bytes, 448 * KiB);
  EXPECT_EQ(t.refused_maps, 1u);
  EXPECT_EQ(t.unmaps, 2u);
  EXPECT_EQ(t.unmap_bytes, 192 * KiB);
  EXPECT_GT(t.map_ns, 0u);
  counted.unmap(at + 128 * KiB, 256 * KiB);
  counted.release_reservation(base, MiB);
  EXPECT_EQ(host.misuse_count(), 0u);
}

}  // namespace
}  // namespace gpushim
