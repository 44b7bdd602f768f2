// TieredAllocator on host memory: routing by size, summed stats, release of both tiers, out-of-memory
// recovery and many threads, with the real tiers (SlabAllocator + VmmArena) over one HostProvider.
#include "allocators/tiered_allocator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "allocators/buddy_allocator.h"
#include "allocators/slab_allocator.h"
#include "providers/host_provider.h"
#include "tests/backend_test_support.h"

namespace gpushim {
namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

Settings small_arena_settings() {
  Settings settings;
  settings.vmm_reserve = 16ull << 30;  // address space only; the random tests stay below ~4 GiB live
  return settings;
}

TEST(TieredAllocator, RoutesBySizeAroundTheSplit) {
  HostProvider provider;
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  auto& t = static_cast<TieredAllocator&>(*tiered);
  EXPECT_EQ(t.split_bytes(), kDefaultTieredSplit);
  void* small = t.allocate(kDefaultTieredSplit, 0);
  void* large = t.allocate(kDefaultTieredSplit + 1, 0);
  ASSERT_NE(small, nullptr);
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(t.small_tier().stats().bytes_in_use, kDefaultTieredSplit);
  // The arena holds the large block and the slab the small one came from (a block of the arena too).
  const std::size_t slab = t.small_tier().stats().bytes_reserved;
  EXPECT_EQ(slab, std::max<std::size_t>(kTieredSlabBytes, kTieredSlabMinBlocks * kDefaultTieredSplit));
  EXPECT_EQ(t.large_tier().stats().bytes_in_use, kDefaultTieredSplit + 1 + slab);
  EXPECT_EQ(t.stats().bytes_in_use, 2 * kDefaultTieredSplit + 1);
  t.deallocate(small, kDefaultTieredSplit, 0);
  t.deallocate(large, kDefaultTieredSplit + 1, 0);
  EXPECT_EQ(t.small_tier().stats().deallocations, 1u);
  EXPECT_EQ(t.large_tier().stats().deallocations, 1u);
}

// The slab's slabs are blocks of the arena: small blocks freed give their slabs back to the arena at
// once, and a large block then fits in that memory without a map call. (With slabs mapped from the
// provider, they went back to it and the arena mapped the block anew.)
TEST(TieredAllocator, SlabsComeFromTheArenaAndGoBackToIt) {
  HostProvider provider;
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  auto& t = static_cast<TieredAllocator&>(*tiered);
  std::vector<void*> small;
  for (int i = 0; i < 256; ++i) small.push_back(t.allocate(32 * KiB, 0));  // 8 MiB of slabs
  EXPECT_EQ(t.small_tier().stats().bytes_reserved, 8 * MiB);
  EXPECT_EQ(t.stats().bytes_reserved, provider.bytes_mapped()) << "the slabs counted twice";
  for (void* p : small) t.deallocate(p, 32 * KiB, 0);
  t.small_tier().release_cached();  // what a thread's exit or the out-of-memory path does
  EXPECT_LE(t.small_tier().stats().bytes_reserved, kTieredSlabBytes) << "the empty slabs stayed in the slab";
  const std::size_t maps = provider.map_calls(), mapped = provider.bytes_mapped();
  void* large = t.allocate(6 * MiB, 0);
  ASSERT_NE(large, nullptr);
  EXPECT_EQ(provider.map_calls(), maps) << "the arena mapped memory the slabs had given back";
  EXPECT_EQ(provider.bytes_mapped(), mapped);
  t.deallocate(large, 6 * MiB, 0);
  EXPECT_EQ(t.stats().bytes_in_use, 0u);
}

// The slab keeps up to kTieredSlabIdleBytes of empty slabs for the next batch of small blocks; the arena
// counts them as in use. So a context synchronization's question (release_due_with) counts them as kept
// in front of the arena, and where the release is due they go to it (hand_in_kept_blocks).
TEST(TieredAllocator, EmptySlabsCountAsKeptInFrontOfTheArenaAndAreHandedIn) {
  HostProvider provider;
  Settings settings = small_arena_settings();
  settings.vmm_release_threshold = 64 * MiB;
  settings.vmm_release_delay_ns = 1;  // passed at every ask; the arena still answers yes once a delay
  auto tiered = make_tiered_allocator(provider, settings);
  auto& t = static_cast<TieredAllocator&>(*tiered);
  auto& slab = static_cast<SlabAllocator&>(t.small_tier());
  std::vector<void*> small;
  for (int i = 0; i < 256; ++i) small.push_back(t.allocate(32 * KiB, 0));  // 8 MiB of slabs
  for (void* p : small) t.deallocate(p, 32 * KiB, 0);
  slab.flush_this_thread();  // the magazine's blocks to their slabs, which keep up to 16 MiB empty
  const std::uint64_t empty = slab.empty_slab_bytes();
  ASSERT_EQ(slab.free_bytes_kept(), empty) << "blocks left in the magazine";
  ASSERT_GE(empty, 4 * MiB) << "too few empty slabs kept for the test to see them counted";
  const std::uint64_t arena_cached = t.large_tier().stats().bytes_cached;
  ASSERT_LE(arena_cached + empty, settings.vmm_release_threshold);
  const std::uint64_t short_of = settings.vmm_release_threshold - arena_cached - empty;
  EXPECT_FALSE(t.release_due_with(short_of)) << "due at the threshold itself";
  ASSERT_TRUE(t.release_due_with(short_of + 1)) << "the empty slabs did not count";
  t.hand_in_kept_blocks();
  EXPECT_EQ(slab.empty_slab_bytes(), 0u) << "the empty slabs stayed in the slab";
  EXPECT_EQ(t.small_tier().stats().bytes_reserved, 0u);
  EXPECT_EQ(t.large_tier().stats().bytes_cached, arena_cached + empty) << "the slabs did not reach the arena";
}

// ... and the hand-in takes the magazines of a thread that stopped allocating, alive and idle, which would
// otherwise keep its slab (and the arena's memory under it) until its next call.
TEST(TieredAllocator, TheHandInTakesAnIdleThreadsMagazines) {
  HostProvider provider;
  Settings settings = small_arena_settings();
  settings.vmm_release_threshold = 0;
  settings.vmm_release_delay_ns = 1;
  auto tiered = make_tiered_allocator(provider, settings);
  auto& t = static_cast<TieredAllocator&>(*tiered);
  std::atomic<int> phase{0};
  std::thread worker([&] {
    t.deallocate(t.allocate(512, 0), 512, 0);  // in the worker's magazine, keeping its slab
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
  });
  while (phase.load() != 1) std::this_thread::yield();
  t.small_tier().release_cached();
  ASSERT_GT(t.small_tier().stats().bytes_reserved, 0u) << "no slab kept by the worker: the test proves nothing";
  auto& slab = static_cast<SlabAllocator&>(t.small_tier());
  EXPECT_GE(slab.free_bytes_kept(), 512u) << "the worker's magazine is not counted as kept";
  ASSERT_TRUE(t.release_due_with(0)) << "the magazine's block did not count";
  t.hand_in_kept_blocks();
  EXPECT_EQ(t.small_tier().stats().bytes_reserved, 0u) << "the idle worker's magazine kept its slab";
  t.release_idle();
  EXPECT_EQ(provider.bytes_mapped(), 0u) << "threshold 0: the arena kept idle memory";
  phase = 2;
  worker.join();
}

TEST(TieredAllocator, AllocateWithoutGrowingGoesToTheTierOfTheSize) {
  HostProvider provider;
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  auto& t = static_cast<TieredAllocator&>(*tiered);
  void* large = t.allocate(4 * MiB, 0);
  ASSERT_NE(large, nullptr);
  t.deallocate(large, 4 * MiB, 0);
  const std::size_t mapped = provider.bytes_mapped();
  void* again = t.allocate_without_growing(4 * MiB, 0);
  EXPECT_NE(again, nullptr) << "the arena holds the memory";
  EXPECT_EQ(t.large_tier().stats().bytes_in_use, 4 * MiB);
  EXPECT_EQ(provider.bytes_mapped(), mapped);
  EXPECT_EQ(t.allocate_without_growing(mapped, 0), nullptr) << "the arena would have to grow";
  // A small size: the slab allocates as usual (its new slab is a block of the arena).
  void* small = t.allocate_without_growing(KiB, 0);
  EXPECT_NE(small, nullptr);
  EXPECT_TRUE(t.can_allocate_without_growing());
  t.deallocate(small, KiB, 0);
  t.deallocate(again, 4 * MiB, 0);
}

TEST(TieredAllocator, SplitSettingMovesTheBoundary) {
  HostProvider provider;
  Settings settings = small_arena_settings();
  settings.tiered_split = 64 * KiB;
  auto tiered = make_tiered_allocator(provider, settings);
  auto& t = static_cast<TieredAllocator&>(*tiered);
  void* p = t.allocate(64 * KiB + 256, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(t.large_tier().stats().allocations, 1u);
  EXPECT_EQ(t.small_tier().stats().allocations, 0u);
  t.deallocate(p, 64 * KiB + 256, 0);
}

TEST(TieredAllocator, RandomSequenceMatchesModelAndStatsCountTheSlabsOnce) {
  HostProvider provider;
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  EXPECT_EQ(testing::run_random_sequence(*tiered, 10000, 16 * MiB, 3), 0u);
  auto& t = static_cast<TieredAllocator&>(*tiered);
  const AllocatorStats s = t.stats(), a = t.small_tier().stats(), b = t.large_tier().stats();
  EXPECT_GT(a.allocations, 0u);
  EXPECT_GT(b.allocations, 0u);
  // The arena counts each slab the small tier took as an allocation of its own: not the program's.
  const std::uint64_t slabs_taken = t.small_memory()->blocks_taken();
  EXPECT_GT(slabs_taken, 0u);
  EXPECT_EQ(s.allocations, a.allocations + b.allocations - slabs_taken);
  EXPECT_EQ(s.bytes_reserved, b.bytes_reserved);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.bytes_reserved, provider.bytes_mapped());
  EXPECT_EQ(s.peak_bytes_reserved, b.peak_bytes_reserved);
  t.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(TieredAllocator, OutOfMemoryReturnsNullThenRecoversAfterReleaseCached) {
  HostProvider provider(HostProvider::kDefaultGranularity, 64 * MiB);
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  std::vector<void*> small;
  for (int i = 0; i < 100000; ++i) {
    void* p = tiered->allocate(16 * KiB, 0);
    if (p == nullptr) break;
    small.push_back(p);
  }
  EXPECT_EQ(small.size(), 32u * 128);  // 32 slabs of 128 blocks
  EXPECT_EQ(tiered->allocate(8 * MiB, 0), nullptr);
  for (void* p : small) tiered->deallocate(p, 16 * KiB, 0);
  // What the router does on failure: release cached memory in the backend, retry once.
  tiered->release_cached();
  void* large = tiered->allocate(48 * MiB, 0);
  EXPECT_NE(large, nullptr);
  tiered->deallocate(large, 48 * MiB, 0);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(TieredAllocator, ManyThreadsKeepBlocksDisjoint) {
  HostProvider provider;
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  testing::run_random_sequences_in_threads(*tiered, 8, 3000, 4 * MiB, 300);
  tiered->release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

TEST(TieredAllocator, ComposesAnyTwoBackends) {
  HostProvider provider;
  TieredAllocator t(std::make_unique<SlabAllocator>(provider, 4 * KiB),
                    std::make_unique<BuddyAllocator>(provider, 16 * MiB), 4 * KiB);
  EXPECT_EQ(testing::run_random_sequence(t, 5000, 4 * MiB, 4), 0u);
  EXPECT_GT(t.large_tier().stats().internal_waste + t.large_tier().stats().allocations, 0u);
  t.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

}  // namespace
}  // namespace gpushim
