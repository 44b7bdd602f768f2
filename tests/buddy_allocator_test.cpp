// BuddyAllocator on host memory: split/merge invariants, rounding waste, regions and dedicated ranges,
// give-back, out-of-memory recovery and many threads.
#include "allocators/buddy_allocator.h"

#include <gtest/gtest.h>

#include "providers/host_provider.h"
#include "tests/backend_test_support.h"

namespace gpushim {
namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

TEST(BuddyAllocator, RandomSequenceMatchesModelAndMergesBackToOneBlockPerRegion) {
  HostProvider provider;
  BuddyAllocator buddy(provider, 64 * MiB);
  EXPECT_EQ(testing::run_random_sequence(buddy, 20000, 8 * MiB, 1), 0u);
  ASSERT_FALSE(::testing::Test::HasFailure());
  EXPECT_TRUE(buddy.free_blocks_fully_merged());
  EXPECT_GE(buddy.region_count(), 1u);
  EXPECT_EQ(buddy.free_block_count(), buddy.region_count());
  const AllocatorStats s = buddy.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
  EXPECT_EQ(s.bytes_cached, s.bytes_reserved);
  EXPECT_EQ(buddy.release_cached(), s.bytes_reserved);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(BuddyAllocator, SplitLeavesOneFreeBuddyPerOrderAndFreeRestoresTheRoot) {
  HostProvider provider(64 * KiB);
  BuddyAllocator buddy(provider, 1 * MiB);  // order 11 over 512 B blocks
  void* a = buddy.allocate(1, 0);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(buddy.free_block_count(), 11u);  // one buddy left at each of orders 0..10
  EXPECT_TRUE(buddy.free_blocks_fully_merged());
  void* b = buddy.allocate(512, 0);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(static_cast<char*>(b) - static_cast<char*>(a), 512);  // a's order-0 buddy
  EXPECT_EQ(buddy.free_block_count(), 10u);
  buddy.deallocate(a, 1, 0);
  EXPECT_EQ(buddy.free_block_count(), 11u);  // a cannot merge while b is live
  buddy.deallocate(b, 512, 0);
  EXPECT_EQ(buddy.free_block_count(), 1u);
  EXPECT_TRUE(buddy.free_blocks_fully_merged());
  EXPECT_EQ(buddy.stats().largest_free_block, 1 * MiB);
}

TEST(BuddyAllocator, ReportsRoundingWasteOfLiveBlocks) {
  HostProvider provider;
  BuddyAllocator buddy(provider, 64 * MiB);
  void* a = buddy.allocate(129 * KiB, 0);
  void* b = buddy.allocate(1, 0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  AllocatorStats s = buddy.stats();
  EXPECT_EQ(s.internal_waste, (256 * KiB - 129 * KiB) + (512 - 1));
  EXPECT_EQ(s.bytes_in_use, 129 * KiB + 1);
  EXPECT_EQ(s.bytes_cached, s.bytes_reserved - 256 * KiB - 512);
  buddy.deallocate(a, 129 * KiB, 0);
  buddy.deallocate(b, 1, 0);
  EXPECT_EQ(buddy.stats().internal_waste, 0u);
}

TEST(BuddyAllocator, RequestLargerThanARegionGetsADedicatedRangeReturnedOnFree) {
  HostProvider provider;
  BuddyAllocator buddy(provider, 4 * MiB);
  void* p = buddy.allocate(10 * MiB + 1, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(buddy.region_count(), 0u);
  EXPECT_EQ(provider.bytes_mapped(), 12 * MiB);  // rounded to the 2 MiB granule, not to 16 MiB
  EXPECT_EQ(buddy.stats().internal_waste, 2 * MiB - 1);
  testing::fill_block(p, 10 * MiB + 1, 7, testing::PatternCoverage::kProbes);
  EXPECT_TRUE(testing::verify_block(p, 10 * MiB + 1, 7, testing::PatternCoverage::kProbes));
  buddy.deallocate(p, 10 * MiB + 1, 0);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(BuddyAllocator, ReleaseCachedGivesBackOnlyEmptyRegions) {
  HostProvider provider;
  BuddyAllocator buddy(provider, 4 * MiB);
  void* a = buddy.allocate(4 * MiB, 0);  // fills region 1
  void* b = buddy.allocate(4 * MiB, 0);  // fills region 2
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(buddy.region_count(), 2u);
  buddy.deallocate(b, 4 * MiB, 0);
  EXPECT_EQ(buddy.release_cached(), 4 * MiB);
  EXPECT_EQ(buddy.region_count(), 1u);
  EXPECT_EQ(provider.bytes_mapped(), 4 * MiB);
  buddy.deallocate(a, 4 * MiB, 0);
  EXPECT_EQ(buddy.release_cached(), 4 * MiB);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(buddy.stats().peak_bytes_reserved, 8 * MiB);
}

TEST(BuddyAllocator, NearTheCapFallsBackToASmallerRegion) {
  HostProvider provider(HostProvider::kDefaultGranularity, 6 * MiB);
  BuddyAllocator buddy(provider, 64 * MiB);
  void* p = buddy.allocate(1 * MiB, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(buddy.stats().bytes_reserved, 4 * MiB);  // 64, 32, .., 8 MiB did not fit
  buddy.deallocate(p, 1 * MiB, 0);
}

TEST(BuddyAllocator, OutOfMemoryReturnsNullThenRecoversAfterFrees) {
  HostProvider provider(HostProvider::kDefaultGranularity, 32 * MiB);
  BuddyAllocator buddy(provider, 16 * MiB);
  std::vector<void*> blocks;
  for (int i = 0; i < 1000; ++i) {
    void* p = buddy.allocate(3 * MiB, 0);  // 4 MiB blocks: 8 fit under the cap
    if (p == nullptr) break;
    blocks.push_back(p);
  }
  EXPECT_EQ(blocks.size(), 8u);
  EXPECT_EQ(buddy.allocate(1, 0), nullptr);
  EXPECT_GE(buddy.stats().failed_allocations, 2u);
  for (void* p : blocks) buddy.deallocate(p, 3 * MiB, 0);
  void* big = buddy.allocate(16 * MiB, 0);
  EXPECT_NE(big, nullptr);
  buddy.deallocate(big, 16 * MiB, 0);
  // A request only a dedicated range can hold works after release_cached gives the regions back.
  EXPECT_EQ(buddy.allocate(30 * MiB, 0), nullptr);
  buddy.release_cached();
  void* huge = buddy.allocate(30 * MiB, 0);
  EXPECT_NE(huge, nullptr);
  buddy.deallocate(huge, 30 * MiB, 0);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(BuddyAllocator, ManyThreadsKeepBlocksDisjoint) {
  HostProvider provider;
  BuddyAllocator buddy(provider, 32 * MiB);
  testing::run_random_sequences_in_threads(buddy, 8, 4000, 1 * MiB, 100);
  EXPECT_TRUE(buddy.free_blocks_fully_merged());
  EXPECT_EQ(buddy.free_block_count(), buddy.region_count());
  buddy.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

TEST(BuddyAllocator, FactoryUsesTheRegionSetting) {
  HostProvider provider;
  Settings settings;
  settings.buddy_region = 8 * MiB;
  auto buddy = make_buddy_allocator(provider, settings);
  void* p = buddy->allocate(100, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(buddy->stats().bytes_reserved, 8 * MiB);
  EXPECT_STREQ(buddy->name(), "buddy");
  EXPECT_EQ(buddy->stats().internal_waste, 512u - 100);
  buddy->deallocate(p, 100, 0);
}

}  // namespace
}  // namespace gpushim
