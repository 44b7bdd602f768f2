// TieredAllocator on host memory: routing by size, summed stats, release of both tiers, out-of-memory
// recovery and many threads, with the real tiers (SlabAllocator + VmmArena) over one HostProvider.
#include "allocators/tiered_allocator.h"

#include <gtest/gtest.h>

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
  EXPECT_EQ(t.large_tier().stats().bytes_in_use, kDefaultTieredSplit + 1);
  EXPECT_EQ(t.stats().bytes_in_use, 2 * kDefaultTieredSplit + 1);
  t.deallocate(small, kDefaultTieredSplit, 0);
  t.deallocate(large, kDefaultTieredSplit + 1, 0);
  EXPECT_EQ(t.small_tier().stats().deallocations, 1u);
  EXPECT_EQ(t.large_tier().stats().deallocations, 1u);
}

// Small blocks freed leave empty slabs that the slab keeps mapped; when the large tier then has to grow
// past its peak, those slabs go back first, so the provider never holds both at once.
TEST(TieredAllocator, EmptySlabsGoBackBeforeTheLargeTierGrowsPastItsPeak) {
  HostProvider provider;
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  auto& t = static_cast<TieredAllocator&>(*tiered);
  std::vector<void*> small;
  for (int i = 0; i < 256; ++i) small.push_back(t.allocate(32 * KiB, 0));  // 8 MiB of slabs
  for (void* p : small) t.deallocate(p, 32 * KiB, 0);
  const std::size_t with_idle_slabs = provider.bytes_mapped();
  EXPECT_GE(t.small_tier().stats().bytes_cached, 4 * MiB) << "the slab kept no empty slabs: nothing to test";

  void* large = t.allocate(64 * MiB, 0);  // the first growth of the large tier: a new peak
  ASSERT_NE(large, nullptr);
  EXPECT_LT(t.small_tier().stats().bytes_reserved, 4 * MiB) << "the empty slabs stayed mapped";
  EXPECT_LT(provider.bytes_mapped(), with_idle_slabs + 64 * MiB);
  t.deallocate(large, 64 * MiB, 0);
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
  // The slab's memory cannot come from blocks given back to the arena: it allocates as usual.
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

TEST(TieredAllocator, RandomSequenceMatchesModelAndStatsAreTheSumOfTheTiers) {
  HostProvider provider;
  auto tiered = make_tiered_allocator(provider, small_arena_settings());
  EXPECT_EQ(testing::run_random_sequence(*tiered, 10000, 16 * MiB, 3), 0u);
  auto& t = static_cast<TieredAllocator&>(*tiered);
  const AllocatorStats s = t.stats(), a = t.small_tier().stats(), b = t.large_tier().stats();
  EXPECT_GT(a.allocations, 0u);
  EXPECT_GT(b.allocations, 0u);
  EXPECT_EQ(s.allocations, a.allocations + b.allocations);
  EXPECT_EQ(s.bytes_reserved, a.bytes_reserved + b.bytes_reserved);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.bytes_reserved, provider.bytes_mapped());
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
