// The VMM arena on host memory: the same algorithm code that runs on the GPU.
#include "allocators/vmm_arena.h"

#include "allocators/growth_policy.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "allocators/arena_shards.h"
#include "providers/host_provider.h"
#include "tests/backend_test_support.h"
#include "tests/block_pattern.h"
#include "tests/held_provider.h"

namespace gpushim {
namespace {

using testing::fill_block;
using testing::verify_block;

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;
constexpr std::size_t kGranule = 64 * KiB;  // smaller than the H100's 2 MiB: more chunk boundaries

VmmArenaOptions options(std::size_t reserve, std::size_t step, std::size_t threshold,
                        std::uint64_t release_delay_ns = kDefaultVmmReleaseDelayNs) {
  VmmArenaOptions o;
  o.reserve = reserve;
  o.grow_step = step;
  o.release_threshold = threshold;
  o.release_delay_ns = release_delay_ns;
  return o;
}

std::uintptr_t address(void* p) { return reinterpret_cast<std::uintptr_t>(p); }

// `count` blocks of 1 MiB, all live at once, then all freed: that much memory cached.
void allocate_and_free_mebibytes(VmmArena& arena, std::size_t count) {
  std::vector<void*> blocks(count);
  for (void*& p : blocks) ASSERT_NE(p = arena.allocate(MiB, 0), nullptr);
  for (void* p : blocks) arena.deallocate(p, MiB, 0);
}

TEST(VmmArena, ReservesOnceAndMapsNothingUntilAsked) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  EXPECT_EQ(arena.reserved_bytes(), 64 * MiB);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(arena.stats().bytes_reserved, 0u);
}

TEST(VmmArena, AllocateWithoutGrowingServesFromMappedMemoryOnly) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  EXPECT_EQ(arena.allocate_without_growing(KiB, 0), nullptr) << "nothing mapped yet";
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  void* a = arena.allocate(3 * MiB, 0);
  ASSERT_NE(a, nullptr);
  const std::size_t mapped = provider.bytes_mapped();
  arena.deallocate(a, 3 * MiB, 0);
  void* b = arena.allocate_without_growing(2 * MiB, 0);
  EXPECT_NE(b, nullptr) << "the freed block's memory serves it";
  EXPECT_EQ(arena.allocate_without_growing(mapped, 0), nullptr) << "would need more than is mapped";
  EXPECT_EQ(provider.bytes_mapped(), mapped);
  const AllocatorStats s = arena.stats();
  EXPECT_EQ(s.failed_allocations, 0u) << "a no without growing is not a failed allocation";
  EXPECT_EQ(s.bytes_in_use, 2 * MiB);
  EXPECT_EQ(s.allocations, 2u);
  arena.deallocate(b, 2 * MiB, 0);
}

// Runs `ask` on one thread while `hold_the_lock` runs on another, held in `provider` (`held`, until
// `reached` is set): true when `ask` returned before the hold was let go.
template <typename Hold, typename Ask>
bool answered_while_held(std::atomic<bool>& held, const std::atomic<bool>& reached, Hold hold_the_lock, Ask ask) {
  held = true;
  std::thread holder(hold_the_lock);
  while (!reached) std::this_thread::yield();
  std::atomic<bool> answered{false};
  std::thread asker([&] {
    ask();
    answered = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!answered && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  const bool answered_while_held = answered;
  held = false;
  asker.join();
  holder.join();
  return answered_while_held;
}

// Runs `ask` while release_cached() holds the arena's lock, giving back the 1 MiB that `arena` (1 MiB
// steps, 2 MiB in use) maps for a block of 1 MiB freed first: the arena is then full at its peak, and
// whatever the hints say was stored before the lock was taken.
template <typename Ask>
bool answered_while_a_release_holds_the_lock(VmmArena& arena, HeldProvider& provider, Ask ask) {
  void* extra = arena.allocate(MiB, 0);
  EXPECT_NE(extra, nullptr);
  arena.deallocate(extra, MiB, 0);
  return answered_while_held(provider.hold_unmap, provider.unmapping, [&] { arena.release_cached(); }, ask);
}

// An ask without growing that the free mapped memory could not serve answers without the lock: at the
// peak with every free fenced, every such ask found nothing after waiting for it (16 threads at 16 MiB
// on the H200: 19% of their wall-clock time).
// A call that waits for the lock stamps when it began (a clock read) only in an arena of several, whose
// caller reads the stamp (allocators/arena_shards.h); a lone arena's wait reads no clock.
TEST(VmmArena, OnlyAnArenaOfSeveralStampsItsWaits) {
  for (const bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "an arena of several" : "a lone arena");
    HostProvider host(kGranule);
    HeldProvider provider(host);
    VmmArenaTotals totals;
    VmmArenaOptions o = options(64 * MiB, MiB, 64 * MiB);
    if (shared) o.totals = &totals;
    VmmArena arena(provider, o);
    void* idle = arena.allocate(MiB, 0);
    ASSERT_NE(idle, nullptr);
    arena.deallocate(idle, MiB, 0);
    provider.hold_unmap = true;
    std::thread holder([&] { arena.release_cached(); });
    while (!provider.unmapping) std::this_thread::yield();
    std::uint64_t stamp = 1;
    std::thread waiter([&] {
      detail::t_vmm_wait_began_ns = 0;
      void* p = arena.allocate(64 * KiB, 0);  // waits for the holder
      stamp = detail::t_vmm_wait_began_ns;
      arena.deallocate(p, 64 * KiB, 0);
    });
    while (arena.lock_waits() == 0) std::this_thread::yield();  // the waiter is waiting
    provider.hold_unmap = false;
    holder.join();
    waiter.join();
    if (shared) EXPECT_NE(stamp, 0u);
    else EXPECT_EQ(stamp, 0u);
  }
}

TEST(VmmArena, AnAskWithoutGrowingThatCannotFitDoesNotWaitForTheLock) {
  HostProvider host(kGranule);
  HeldProvider provider(host);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* kept = arena.allocate(2 * MiB, 0);  // all that is mapped is in use
  ASSERT_NE(kept, nullptr);
  EXPECT_TRUE(answered_while_a_release_holds_the_lock(
      arena, provider, [&] { EXPECT_EQ(arena.allocate_without_growing(2 * MiB, 0), nullptr); }))
      << "the ask waited for the lock though nothing mapped could hold it";
  // Once the block is back, the same ask is served: the hint follows the deallocation.
  arena.deallocate(kept, 2 * MiB, 0);
  void* again = arena.allocate_without_growing(2 * MiB, 0);
  EXPECT_NE(again, nullptr);
  arena.deallocate(again, 2 * MiB, 0);
}

// The same for an allocation under a NoNewPeakScope (the router's first ask at the peak while fenced
// blocks wait): the arena at its peak with nothing free answers without the lock (16 threads with a
// stream each at 1 MiB on the H200 spent 66% of their time at the peak waiting for it). The hint counts
// room below the peak too: once memory is given back, growing up to the old peak is allowed again.
TEST(VmmArena, AnAskUnderNoNewPeakThatCannotFitDoesNotWaitForTheLock) {
  HostProvider host(kGranule);
  HeldProvider provider(host);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* kept = arena.allocate(2 * MiB, 0);  // all that is mapped is in use, at the peak
  ASSERT_NE(kept, nullptr);
  EXPECT_TRUE(answered_while_a_release_holds_the_lock(arena, provider, [&] {
    NoNewPeakScope no_new_peak;
    EXPECT_EQ(arena.allocate(2 * MiB, 0), nullptr);
  })) << "the ask waited for the lock though the arena was full at its peak";
  NoNewPeakScope no_new_peak;
  void* below_peak = arena.allocate(MiB, 0);  // the 1 MiB given back is room below the peak
  EXPECT_NE(below_peak, nullptr) << "growth below the peak is allowed under the scope";
  arena.deallocate(kept, 2 * MiB, 0);
  void* again = arena.allocate(2 * MiB, 0);
  EXPECT_NE(again, nullptr) << "the freed 2 MiB serve it: the hint follows the deallocation";
  arena.deallocate(again, 2 * MiB, 0);
  arena.deallocate(below_peak, MiB, 0);
  EXPECT_EQ(arena.stats().failed_allocations, 0u) << "a no under the scope is not a failed allocation";
}

// The provider's map calls (~100 us a step on the H200) run outside the arena's lock: while one thread
// grows, a free and an allocation that mapped memory serves go on (16 threads with a stream each at
// 1 MiB waited 12 times as long as the lock was held, half of the hold being growth; twentieth session).
TEST(VmmArena, FreesAndFittingAsksGoOnWhileAnotherThreadGrows) {
  HostProvider host(kGranule);
  HeldProvider provider(host);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* a = arena.allocate(MiB / 2, 0);
  void* b = arena.allocate(MiB / 4, 0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  void* grown = nullptr;
  EXPECT_TRUE(answered_while_held(provider.hold, provider.mapping, [&] { grown = arena.allocate(4 * MiB, 0); },
                                  [&] {
                                    arena.deallocate(a, MiB / 2, 0);
                                    void* c = arena.allocate(MiB / 2, 0);
                                    EXPECT_EQ(c, a) << "the freed block's place serves the same size";
                                    arena.deallocate(c, MiB / 2, 0);
                                  }))
      << "a free and a fitting allocation waited for another thread's growth";
  ASSERT_NE(grown, nullptr);
  EXPECT_EQ(address(grown), address(b) + MiB / 4) << "the growth extends the free tail contiguously";
  const AllocatorStats s = arena.stats();
  EXPECT_EQ(s.bytes_reserved, provider.bytes_mapped());
  EXPECT_EQ(s.bytes_cached + s.bytes_in_use + s.internal_waste, s.bytes_reserved);
  arena.deallocate(grown, 4 * MiB, 0);
  arena.deallocate(b, MiB / 4, 0);
}

// One thread grows at a time: another that needs memory meanwhile waits, then takes its block from the
// step just mapped, so two threads meeting at the top map one step, not two.
TEST(VmmArena, ASecondThreadThatNeedsMemoryWaitsForTheGrowthAndUsesItsStep) {
  HostProvider host(kGranule);
  HeldProvider provider(host);
  VmmArena arena(provider, options(64 * MiB, 8 * MiB, 64 * MiB));
  void* first = nullptr;
  void* second = nullptr;
  EXPECT_FALSE(answered_while_held(provider.hold, provider.mapping, [&] { first = arena.allocate(MiB, 0); },
                                   [&] { second = arena.allocate(MiB, 0); }))
      << "the second ask was served before the growth it needed";
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(provider.maps.load(), 1) << "both blocks came from one step";
  EXPECT_EQ(provider.bytes_mapped(), 8 * MiB);
  arena.deallocate(first, MiB, 0);
  arena.deallocate(second, MiB, 0);
}

// A step the provider refuses leaves the arena as it was: the space is unmapped again, the counts and
// the peak are the old ones, and the next growth maps at the same place.
TEST(VmmArena, ARefusedGrowthLeavesTheArenaAsItWas) {
  HostProvider provider(kGranule, 4 * MiB);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* a = arena.allocate(MiB, 0);
  ASSERT_NE(a, nullptr);
  const AllocatorStats before = arena.stats();
  EXPECT_EQ(arena.allocate(6 * MiB, 0), nullptr) << "over the cap";
  const AllocatorStats after = arena.stats();
  EXPECT_EQ(after.bytes_reserved, before.bytes_reserved);
  EXPECT_EQ(after.peak_bytes_reserved, before.peak_bytes_reserved) << "the refused step left the peak";
  EXPECT_EQ(after.bytes_cached, before.bytes_cached);
  EXPECT_EQ(after.failed_allocations, 1u);
  void* b = arena.allocate(2 * MiB, 0);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(address(b), address(a) + MiB) << "the space the refused step claimed was unmapped again";
  EXPECT_EQ(provider.misuse_count(), 0u);
  arena.deallocate(a, MiB, 0);
  arena.deallocate(b, 2 * MiB, 0);
}

TEST(VmmArena, BlocksAreAlignedAndHoldTheirOwnBytes) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  std::vector<std::pair<void*, std::size_t>> blocks;
  for (std::size_t bytes : {1ul, 7ul, 255ul, 256ul, 257ul, 1000ul, 4096ul, 65535ul, 65536ul, 300000ul,
                            MiB + 1, 3 * MiB}) {
    void* p = arena.allocate(bytes, 0);
    ASSERT_NE(p, nullptr) << bytes;
    EXPECT_EQ(address(p) % kMinAlignment, 0u) << bytes;
    fill_block(p, bytes, blocks.size());
    blocks.emplace_back(p, bytes);
  }
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(verify_block(blocks[i].first, blocks[i].second, i)) << blocks[i].second;
    arena.deallocate(blocks[i].first, blocks[i].second, 0);
  }
  AllocatorStats s = arena.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
  EXPECT_EQ(s.bytes_cached, s.bytes_reserved);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(VmmArena, FreedNeighboursCoalesceSoABigBlockFitsWithoutGrowing) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* quarter[4];
  for (auto& p : quarter) ASSERT_NE(p = arena.allocate(256 * KiB, 0), nullptr);
  EXPECT_EQ(provider.bytes_mapped(), MiB);
  EXPECT_EQ(arena.stats().largest_free_block, 0u);
  for (int i : {1, 3, 0, 2}) arena.deallocate(quarter[i], 256 * KiB, 0);
  EXPECT_EQ(arena.stats().largest_free_block, MiB);  // one range, not four
  std::size_t maps = provider.map_calls();
  void* whole = arena.allocate(MiB, 0);
  EXPECT_EQ(whole, quarter[0]);
  EXPECT_EQ(provider.map_calls(), maps);
  arena.deallocate(whole, MiB, 0);
}

TEST(VmmArena, GrowthExtendsTheFreeTailContiguously) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* a = arena.allocate(512 * KiB, 0);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(provider.bytes_mapped(), MiB);
  // 1.5 MiB: the 512 KiB free tail plus 1 MiB mapped right behind it.
  void* b = arena.allocate(MiB + 512 * KiB, 0);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(address(b), address(a) + 512 * KiB);
  EXPECT_EQ(provider.bytes_mapped(), 2 * MiB);
  EXPECT_EQ(arena.chunk_count(), 2u);
  // A request larger than the step maps what it needs in one chunk.
  void* c = arena.allocate(5 * MiB, 0);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(provider.bytes_mapped(), 7 * MiB);
  for (auto [p, n] : {std::pair{a, 512 * KiB}, {b, MiB + 512 * KiB}, {c, 5 * MiB}}) arena.deallocate(p, n, 0);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// A growth beyond a step maps its last granule as a chunk of its own. The next large block is placed
// behind this one's free tail, so it starts inside that granule; with one chunk, it pinned all of the
// freed block's own memory (a 256 MiB block on the H200 stayed mapped with the threshold at 0).
TEST(VmmArena, AFreedLargeBlockGoesBackBesideALiveNeighbourInItsLastGranule) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 0, /*release_delay_ns=*/0));
  void* small = arena.allocate(32 * KiB, 0);  // chunk 0, a step: [0, 1M)
  ASSERT_NE(small, nullptr);
  // [32K, 4144K): the step's free tail, then 3,136 KiB mapped behind it (4,160 KiB): 16 KiB left free.
  void* a = arena.allocate(4 * MiB + 16 * KiB, 0);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(provider.bytes_mapped(), MiB + 3136 * KiB);
  EXPECT_EQ(arena.chunk_count(), 3u) << "the growth beyond a step: all but its last granule, and that granule";
  void* b = arena.allocate(4 * MiB + 16 * KiB, 0);  // starts in a's free 16 KiB
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(address(b), address(a) + 4 * MiB + 16 * KiB);
  const std::size_t with_both = provider.bytes_mapped();
  arena.deallocate(a, 4 * MiB + 16 * KiB, 0);
  // a's growth but its last granule (which b's head shares) goes back; its head in chunk 0 stays with
  // `small`.
  EXPECT_EQ(provider.bytes_mapped(), with_both - (3136 * KiB - kGranule));
  arena.deallocate(b, 4 * MiB + 16 * KiB, 0);
  arena.deallocate(small, 32 * KiB, 0);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);  // every unmap was exactly one earlier map
}

// The free range right below unmapped space (the wilderness) is used only when no hole fits: taking
// it for a block a hole could hold leaves the hole behind, and the arena grows past it sooner
// (docs/perf-notes.md, "Fit on a growing KV cache").
TEST(VmmArena, HolesAreFilledBeforeTheWilderness) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, 4 * MiB, 64 * MiB));
  void* a = arena.allocate(2 * MiB, 0);
  void* b = arena.allocate(MiB + 512 * KiB, 0);  // leaves 512 KiB of the 4 MiB step free at the top
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  arena.deallocate(a, 2 * MiB, 0);               // a 2 MiB hole below b
  EXPECT_EQ(arena.stats().largest_free_block, 2 * MiB);
  // Best fit alone would take the smaller 512 KiB wilderness.
  void* c = arena.allocate(256 * KiB, 0);
  EXPECT_EQ(c, a);
  EXPECT_EQ(provider.bytes_mapped(), 4 * MiB);
  void* e = arena.allocate(MiB + 768 * KiB, 0);  // the rest of the hole
  EXPECT_EQ(address(e), address(a) + 256 * KiB);
  // What no hole holds goes to the wilderness before the arena grows.
  void* d = arena.allocate(512 * KiB, 0);
  EXPECT_EQ(address(d), address(b) + MiB + 512 * KiB);
  EXPECT_EQ(provider.bytes_mapped(), 4 * MiB);
  for (auto [p, n] : {std::pair{b, MiB + 512 * KiB}, {c, 256 * KiB}, {d, 512 * KiB}, {e, MiB + 768 * KiB}})
    arena.deallocate(p, n, 0);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// Giving a chunk back turns the free memory just below it into wilderness too.
TEST(VmmArena, FreeMemoryBelowAGivenBackChunkIsWilderness) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, kGranule, 64 * MiB));
  void* x = arena.allocate(32 * KiB, 0);  // chunk 0: [0, 64K)
  void* y = arena.allocate(96 * KiB, 0);  // [32K, 128K): the rest of chunk 0 and all of chunk 1
  void* z = arena.allocate(64 * KiB, 0);  // chunk 2
  void* h = arena.allocate(32 * KiB, 0);  // chunk 3: [192K, 224K)
  void* g = arena.allocate(32 * KiB, 0);  // [224K, 256K)
  for (void* p : {x, y, z, h, g}) ASSERT_NE(p, nullptr);
  EXPECT_EQ(address(h), address(x) + 192 * KiB);
  arena.deallocate(h, 32 * KiB, 0);  // a 32 KiB hole between z and g
  arena.deallocate(y, 96 * KiB, 0);
  EXPECT_EQ(arena.release_cached(), kGranule);  // chunk 1; [32K, 64K) stays mapped below the gap
  void* c = arena.allocate(32 * KiB, 0);
  EXPECT_EQ(c, h);  // the hole, not the equally large wilderness freed after it
  for (auto [p, n] : {std::pair{x, 32 * KiB}, {z, 64 * KiB}, {g, 32 * KiB}, {c, 32 * KiB}}) arena.deallocate(p, n, 0);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(VmmArena, ReleaseCachedGivesBackOnlyChunksNoLiveBlockTouches) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, kGranule, 64 * MiB));
  void* first = arena.allocate(32 * KiB, 0);
  void* spanning = arena.allocate(64 * KiB, 0);  // [32K, 96K): across the first two chunks
  ASSERT_NE(first, nullptr);
  ASSERT_NE(spanning, nullptr);
  EXPECT_EQ(address(spanning), address(first) + 32 * KiB);
  EXPECT_EQ(arena.chunk_count(), 2u);
  arena.deallocate(first, 32 * KiB, 0);
  EXPECT_EQ(arena.release_cached(), 0u);  // both chunks hold part of `spanning`
  EXPECT_EQ(provider.bytes_mapped(), 2 * kGranule);
  arena.deallocate(spanning, 64 * KiB, 0);
  EXPECT_EQ(arena.release_cached(), 2 * kGranule);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(arena.stats().bytes_reserved, 0u);
  EXPECT_EQ(arena.stats().bytes_cached, 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);  // every unmap was exactly one earlier map
  // The arena maps again into the hole it left.
  void* again = arena.allocate(100 * KiB, 0);
  EXPECT_EQ(again, first);
  arena.deallocate(again, 100 * KiB, 0);
}

// GPUSHIM_VMM_RELEASE_DELAY=0: memory above the threshold goes back at every free.
TEST(VmmArena, WithoutADelayIdleMemoryAboveTheThresholdGoesBackOnFree) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 2 * MiB, /*release_delay_ns=*/0));
  std::vector<void*> blocks;
  for (int i = 0; i < 12; ++i) blocks.push_back(arena.allocate(MiB, 0));
  for (void* p : blocks) ASSERT_NE(p, nullptr);
  EXPECT_EQ(provider.bytes_mapped(), 12 * MiB);
  for (void* p : blocks) arena.deallocate(p, MiB, 0);
  EXPECT_LE(arena.stats().bytes_cached, 2 * MiB);
  EXPECT_LE(provider.bytes_mapped(), 2 * MiB);
  EXPECT_GT(provider.unmap_calls(), 0u);
  // Freeing below the threshold keeps the memory.
  std::size_t unmaps = provider.unmap_calls();
  void* p = arena.allocate(MiB, 0);
  arena.deallocate(p, MiB, 0);
  EXPECT_EQ(provider.unmap_calls(), unmaps);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// With the delay, memory a program frees and takes again within it stays mapped: no unmap, no map.
// Given back at every free, each round here unmapped 4 MiB and mapped it again (and on the H200, one
// thread at 1 GiB with a stream made ~700 such pairs of calls a second).
TEST(VmmArena, MemoryTakenAgainWithinTheDelayStaysMapped) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 8 * MiB, /*release_delay_ns=*/200'000'000));
  std::vector<void*> blocks(12);
  for (void*& p : blocks) ASSERT_NE(p = arena.allocate(MiB, 0), nullptr);
  const std::size_t maps = provider.map_calls();
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);  // 2.5 delays
  int rounds = 0;
  while (std::chrono::steady_clock::now() < until || rounds < 3) {
    for (void* p : blocks) arena.deallocate(p, MiB, 0);  // 12 MiB free, 4 above the threshold
    for (void*& p : blocks) ASSERT_NE(p = arena.allocate(MiB, 0), nullptr);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ++rounds;
  }
  EXPECT_EQ(provider.unmap_calls(), 0u) << "memory taken again every 5 ms was given back";
  EXPECT_EQ(provider.map_calls(), maps);
  for (void* p : blocks) arena.deallocate(p, MiB, 0);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// ... and memory that stays free through a whole delay goes back at a free after it, down to the
// threshold and no further: the window that is open when the program stops taking memory has seen the
// memory in use, so the release comes in the next one (within two delays).
TEST(VmmArena, MemoryIdleThroughTheDelayGoesBackDownToTheThreshold) {
  HostProvider provider(kGranule);
  constexpr std::uint64_t kDelayNs = 50'000'000;
  VmmArena arena(provider, options(64 * MiB, MiB, 8 * MiB, kDelayNs));
  ASSERT_NO_FATAL_FAILURE(allocate_and_free_mebibytes(arena, 12));
  EXPECT_EQ(provider.bytes_mapped(), 12 * MiB) << "given back before it stayed idle for the delay";
  const auto a_free_after = [&](int delays) {
    std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs * delays + kDelayNs / 5));
    void* p = arena.allocate(256, 0);
    ASSERT_NE(p, nullptr);
    arena.deallocate(p, 256, 0);
  };
  a_free_after(1);
  a_free_after(1);
  EXPECT_LE(provider.bytes_mapped(), 9 * MiB) << "idle memory above the threshold stayed mapped";
  EXPECT_GE(provider.bytes_mapped(), 8 * MiB) << "memory below the threshold was given back";
  const std::size_t unmaps = provider.unmap_calls();
  a_free_after(2);  // at the threshold: nothing more goes
  EXPECT_EQ(provider.unmap_calls(), unmaps);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// Blocks kept in front of the arena (thread caches, the router's returned lists) count as idle with what
// it caches when a context synchronization asks (release_due_with): due once together they are above the
// threshold and the idle window's delay has passed, and then not again within a delay, since the blocks
// brought in go back only after a window of their own.
TEST(VmmArena, BlocksHeldInFrontAreDueWithTheCachedMemoryAtMostOnceADelay) {
  HostProvider provider(kGranule);
  constexpr std::uint64_t kDelayNs = 50'000'000;
  VmmArena arena(provider, options(64 * MiB, MiB, 8 * MiB, kDelayNs));
  ASSERT_NO_FATAL_FAILURE(allocate_and_free_mebibytes(arena, 6));  // 6 MiB cached: below the threshold
  std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs + kDelayNs / 5));
  EXPECT_FALSE(arena.release_due_with(0)) << "nothing held in front: only the arena's own release applies";
  EXPECT_FALSE(arena.release_due_with(2 * MiB)) << "due at the threshold itself";
  EXPECT_TRUE(arena.release_due_with(3 * MiB)) << "9 MiB idle, past the delay, was not due";
  EXPECT_FALSE(arena.release_due_with(3 * MiB)) << "due twice within a delay: the keepers' blocks taken for nothing";
  std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs + kDelayNs / 5));
  EXPECT_TRUE(arena.release_due_with(3 * MiB)) << "not due again a delay later";
  // A free that leaves more than the threshold cached past the delay starts a new idle window: the memory
  // was in use within it, so nothing is due until it has passed.
  std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs + kDelayNs / 5));
  void* p = arena.allocate(10 * MiB, 0);
  ASSERT_NE(p, nullptr);
  arena.deallocate(p, 10 * MiB, 0);
  EXPECT_FALSE(arena.release_due_with(MiB)) << "due within the idle window the last free began";
  std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs + kDelayNs / 5));
  EXPECT_TRUE(arena.release_due_with(MiB)) << "not due once the window had passed";
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// What the delay keeps is bounded: idle memory above twice the threshold goes back at once, as without
// a delay; the rest waits for it. Kept whole, 16 threads with a stream each at 1 GiB mapped the whole
// H200 (twenty-sixth session).
TEST(VmmArena, IdleMemoryAboveTwiceTheThresholdGoesBackAtOnce) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 4 * MiB, /*release_delay_ns=*/10'000'000'000));
  ASSERT_NO_FATAL_FAILURE(allocate_and_free_mebibytes(arena, 12));
  EXPECT_LE(provider.bytes_mapped(), 8 * MiB) << "idle memory above twice the threshold stayed mapped";
  EXPECT_GE(provider.bytes_mapped(), 7 * MiB) << "memory below twice the threshold went back before the delay";
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(VmmArena, OutOfMemoryReturnsNullAndRecoversAfterFrees) {
  HostProvider provider(kGranule, 4 * MiB);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  std::vector<void*> blocks;
  while (void* p = arena.allocate(MiB, 0)) {
    blocks.push_back(p);
    ASSERT_LE(blocks.size(), 4u);
  }
  EXPECT_EQ(blocks.size(), 4u);
  EXPECT_EQ(arena.allocate(256, 0), nullptr);
  EXPECT_EQ(arena.stats().failed_allocations, 2u);
  arena.deallocate(blocks.back(), MiB, 0);
  blocks.pop_back();
  void* p = arena.allocate(MiB, 0);
  ASSERT_NE(p, nullptr);
  arena.deallocate(p, MiB, 0);
  for (void* b : blocks) arena.deallocate(b, MiB, 0);
  // With everything free, only what fits under the cap can be had, and once it is given back,
  // a block of the whole cap fits.
  arena.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  p = arena.allocate(4 * MiB, 0);
  EXPECT_NE(p, nullptr);
  arena.deallocate(p, 4 * MiB, 0);
}

TEST(VmmArena, MapsLessThanAStepWhenOnlyThatFitsUnderTheCap) {
  HostProvider provider(kGranule, MiB + 256 * KiB);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* a = arena.allocate(MiB, 0);
  ASSERT_NE(a, nullptr);
  void* b = arena.allocate(200 * KiB, 0);  // a full 1 MiB step does not fit; 256 KiB does
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(provider.bytes_mapped(), MiB + 256 * KiB);
  arena.deallocate(a, MiB, 0);
  arena.deallocate(b, 200 * KiB, 0);
}

TEST(VmmArena, RequestsLargerThanTheReservationFail) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(4 * MiB, MiB, 64 * MiB));
  EXPECT_EQ(arena.allocate(5 * MiB, 0), nullptr);
  EXPECT_EQ(arena.allocate(~std::size_t{0} - 10, 0), nullptr);
  EXPECT_EQ(arena.allocate(0, 0), nullptr);
  void* p = arena.allocate(4 * MiB, 0);
  EXPECT_NE(p, nullptr);
  EXPECT_EQ(arena.allocate(256, 0), nullptr);  // address space exhausted
  arena.deallocate(p, 4 * MiB, 0);
}

// Random sequences checked against a reference model of live blocks.
void run_random_sequence(unsigned seed, std::size_t cap, std::size_t threshold) {
  HostProvider provider(kGranule, cap);
  VmmArena arena(provider, options(256 * MiB, MiB, threshold));
  std::mt19937_64 rng(seed);
  testing::BlockModel model(testing::PatternCoverage::kEveryByte);
  std::uint64_t next_tag = 1, allocations = 0, deallocations = 0, failed = 0;
  std::size_t waste = 0;
  auto waste_of = [](std::size_t bytes) { return (bytes + 511) / 512 * 512 - bytes; };
  auto size_of = [&] {
    switch (rng() % 4) {
      case 0: return 1 + rng() % 512;
      case 1: return 1 + rng() % (64 * KiB);
      case 2: return 1 + rng() % (512 * KiB);
      default: return 1 + rng() % (3 * MiB);
    }
  };
  for (int step = 0; step < 4000; ++step) {
    SCOPED_TRACE(step);
    bool do_free = model.size() != 0 && (rng() % 100 < 45 || model.bytes() > 48 * MiB);
    if (do_free) {
      waste -= waste_of(model.deallocate(arena, model.random_live(rng)).bytes);
      ++deallocations;
    } else {
      std::size_t bytes = size_of();
      void* p = arena.allocate(bytes, 0);
      if (!p) {
        ++failed;
        ASSERT_NE(cap, HostProvider::kUnlimited) << "only a capped provider may run out";
        continue;
      }
      ASSERT_NO_FATAL_FAILURE(model.add(p, bytes, next_tag++));
      waste += waste_of(bytes);
      ++allocations;
    }
    if (step % 97 == 0) arena.release_cached();
    if (step % 50 == 0) {
      AllocatorStats s = arena.stats();
      ASSERT_EQ(s.allocations, allocations);
      ASSERT_EQ(s.deallocations, deallocations);
      ASSERT_EQ(s.failed_allocations, failed);
      ASSERT_EQ(s.bytes_in_use, model.bytes());
      ASSERT_EQ(s.internal_waste, waste);
      ASSERT_EQ(s.bytes_reserved, provider.bytes_mapped());
      ASSERT_EQ(s.bytes_cached + model.bytes() + waste, s.bytes_reserved);
      ASSERT_LE(s.largest_free_block, s.bytes_cached);
    }
  }
  model.deallocate_all(arena);
  arena.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
  AllocatorStats s = arena.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.largest_free_block, 0u);
}

TEST(VmmArena, RandomSequencesMatchTheReferenceModel) {
  for (unsigned seed = 1; seed <= 4; ++seed) {
    SCOPED_TRACE(seed);
    run_random_sequence(seed, HostProvider::kUnlimited, 8 * MiB);
  }
}

TEST(VmmArena, RandomSequencesUnderACapMatchTheReferenceModel) {
  for (unsigned seed = 11; seed <= 13; ++seed) {
    SCOPED_TRACE(seed);
    run_random_sequence(seed, 24 * MiB, 1);  // give back idle chunks at once
  }
}

// A split undone (vmm_arena.cpp): a block freed right after it was carved waits to be merged, and goes
// out again as it is to a request of its size. Two arenas run one random sequence, rich in "allocate,
// free it, allocate that size again"; `merged` asks for its statistics after every free, which merges a
// deferred free at once, as every free did before. Every allocation must get the same address in both,
// their mapped bytes and books must agree: deferring changed no placement and no give-back. The second
// configuration keeps the arena above its threshold most of the time, between it and twice it (where a
// free waits to merge while the delay runs) and above twice it (where it merges and gives back at once).
TEST(VmmArena, AFreeWhoseMergeWaitsPlacesEveryBlockAsAMergedFreeWould) {
  struct Configuration {
    std::size_t threshold;
    std::uint64_t release_delay_ns;
    int least_frees_between;  // frees just after their carve that left between 1x and 2x the threshold cached
  };
  for (const Configuration config : {Configuration{8 * MiB, kDefaultVmmReleaseDelayNs, 0},
                                     Configuration{3 * MiB, 10'000'000'000ull, 20}}) {
   for (unsigned seed = 21; seed <= 24; ++seed) {
    SCOPED_TRACE(::testing::Message() << "threshold " << config.threshold << ", seed " << seed);
    HostProvider deferred_provider(kGranule), merged_provider(kGranule);
    VmmArena deferred(deferred_provider, options(256 * MiB, MiB, config.threshold, config.release_delay_ns));
    VmmArena merged(merged_provider, options(256 * MiB, MiB, config.threshold, config.release_delay_ns));
    std::mt19937_64 rng(seed);
    struct Live {
      void* in_deferred;
      void* in_merged;
      std::size_t bytes;
    };
    std::vector<Live> live;
    std::uintptr_t deferred_base = 0, merged_base = 0;
    std::size_t last_bytes = MiB;
    int undone = 0;              // allocations the deferral served: the size of a block just freed
    int frees_between = 0;       // see Configuration
    bool just_freed_last = false;  // the last call freed the block the call before it allocated
    bool last_allocated = false;
    for (int step = 0; step < 3000; ++step) {
      SCOPED_TRACE(step);
      const unsigned pick = rng() % 100;
      if (!live.empty() && (pick < 45 || live.size() > 40)) {
        // Mostly the block just allocated (the pattern the deferral serves), else any.
        const std::size_t i = pick < 30 ? live.size() - 1 : rng() % live.size();
        just_freed_last = last_allocated && i == live.size() - 1;
        last_allocated = false;
        deferred.deallocate(live[i].in_deferred, live[i].bytes, 0);
        merged.deallocate(live[i].in_merged, live[i].bytes, 0);
        const std::size_t cached = merged.stats().bytes_cached;
        frees_between += just_freed_last && cached > config.threshold && cached <= 2 * config.threshold;
        ASSERT_EQ(deferred_provider.bytes_mapped(), merged_provider.bytes_mapped());
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      const bool again = pick < 75;  // the size of the block allocated last
      const std::size_t bytes = again ? last_bytes : 1 + rng() % (3 * MiB);
      undone += again && just_freed_last;
      just_freed_last = false;
      last_allocated = true;
      void* p = deferred.allocate(bytes, 0);
      void* q = merged.allocate(bytes, 0);
      ASSERT_NE(p, nullptr);
      ASSERT_NE(q, nullptr);
      if (step == 0) {  // the two reservations' starts
        deferred_base = address(p);
        merged_base = address(q);
      }
      ASSERT_EQ(address(p) - deferred_base, address(q) - merged_base);
      live.push_back({p, q, bytes});
      last_bytes = bytes;
    }
    EXPECT_GT(undone, 100);
    EXPECT_GE(frees_between, config.least_frees_between);
    const AllocatorStats a = deferred.stats(), b = merged.stats();
    EXPECT_EQ(a.bytes_in_use, b.bytes_in_use);
    EXPECT_EQ(a.bytes_reserved, b.bytes_reserved);
    EXPECT_EQ(a.bytes_cached, b.bytes_cached);
    EXPECT_EQ(a.largest_free_block, b.largest_free_block);
    for (const Live& each : live) {
      deferred.deallocate(each.in_deferred, each.bytes, 0);
      merged.deallocate(each.in_merged, each.bytes, 0);
    }
    EXPECT_EQ(deferred.stats().largest_free_block, merged.stats().largest_free_block);
    EXPECT_EQ(deferred_provider.bytes_mapped(), merged_provider.bytes_mapped());
   }
  }
}

// A deferred free is free memory at once: counted, merged for the largest free block, and given back.
TEST(VmmArena, AFreeWhoseMergeWaitsIsFreeMemoryAtOnce) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(64 * MiB, MiB, 64 * MiB));
  void* p = arena.allocate(256 * KiB, 0);
  ASSERT_NE(p, nullptr);
  arena.deallocate(p, 256 * KiB, 0);  // right after its carve: not merged yet
  const AllocatorStats s = arena.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.bytes_cached, MiB);
  EXPECT_EQ(s.largest_free_block, MiB) << "one range with the rest of the step";
  p = arena.allocate(256 * KiB, 0);
  arena.deallocate(p, 256 * KiB, 0);
  void* whole = arena.allocate(MiB, 0);  // needs the freed block merged with the rest
  EXPECT_EQ(whole, p);
  EXPECT_EQ(provider.map_calls(), 1u);
  arena.deallocate(whole, MiB, 0);
  EXPECT_EQ(arena.release_cached(), MiB);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// A free that may give memory back merges at once, so that it can: above the threshold without a delay,
// above twice it with one. Between the threshold and twice it, within the delay, it waits like the rest.
TEST(VmmArena, AFreeThatMayGiveMemoryBackDoesNotWaitToMerge) {
  {
    HostProvider provider(kGranule);
    VmmArena arena(provider, options(64 * MiB, MiB, 0, /*release_delay_ns=*/0));
    void* p = arena.allocate(2 * MiB, 0);
    ASSERT_NE(p, nullptr);
    arena.deallocate(p, 2 * MiB, 0);  // right after its carve
    EXPECT_EQ(provider.bytes_mapped(), 0u) << "above the threshold, no delay";
    EXPECT_EQ(provider.misuse_count(), 0u);
  }
  {
    HostProvider provider(kGranule);
    VmmArena arena(provider, options(64 * MiB, MiB, 2 * MiB, /*release_delay_ns=*/10'000'000'000));
    void* p = arena.allocate(3 * MiB, 0);
    ASSERT_NE(p, nullptr);
    arena.deallocate(p, 3 * MiB, 0);  // the first free above the threshold opens the 10 s window
    p = arena.allocate(6 * MiB, 0);
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(provider.bytes_mapped(), 6 * MiB);
    arena.deallocate(p, 6 * MiB, 0);
    EXPECT_LE(provider.bytes_mapped(), 4 * MiB) << "above twice the threshold, within the delay";
    EXPECT_EQ(provider.misuse_count(), 0u);
  }
  {
    HostProvider provider(kGranule);
    VmmArena arena(provider, options(64 * MiB, MiB, 2 * MiB, /*release_delay_ns=*/10'000'000'000));
    void* p = arena.allocate(3 * MiB, 0);
    ASSERT_NE(p, nullptr);
    arena.deallocate(p, 3 * MiB, 0);  // opens the window
    for (int round = 0; round < 3; ++round) {  // each free waits to merge; nothing goes back
      ASSERT_EQ(arena.allocate(3 * MiB, 0), p);
      arena.deallocate(p, 3 * MiB, 0);
      EXPECT_EQ(provider.bytes_mapped(), 3 * MiB) << "between the threshold and twice it, within the delay";
    }
    EXPECT_EQ(arena.stats().largest_free_block, 3 * MiB);
    EXPECT_EQ(provider.misuse_count(), 0u);
  }
}

// Threads allocate and free at once with their blocks checked for overlap; the arena's books balance.
// Returns its statistics once every block is back.
AllocatorStats churn_in_threads_and_check(VmmArena& arena, unsigned first_seed) {
  testing::ThreadChurn churn;
  churn.operations_per_thread = 3000;
  churn.max_blocks_per_thread = 64;
  churn.large_bytes = 2 * MiB;
  churn.first_seed = first_seed;
  const testing::ChurnOutcome outcome =
      testing::churn_in_threads(arena, churn, [&](std::size_t bytes) { return arena.allocate(bytes, 0); });
  EXPECT_EQ(outcome.corrupted, 0);
  EXPECT_EQ(outcome.failures, 0);
  const AllocatorStats s = arena.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.allocations, s.deallocations);
  return s;
}

TEST(VmmArena, ManyThreadsKeepTheirBlocksApart) {
  HostProvider provider(kGranule);
  // Low threshold, no delay: give-back races too.
  VmmArena arena(provider, options(256 * MiB, MiB, 4 * MiB, /*release_delay_ns=*/0));
  EXPECT_LE(churn_in_threads_and_check(arena, 100).bytes_cached, 4 * MiB);
  arena.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// The give-back by windows under threads: blocks stay apart and the arena's books balance while
// windows open and close in the middle of the churn.
TEST(VmmArena, ManyThreadsKeepTheirBlocksApartWhileIdleWindowsGiveMemoryBack) {
  HostProvider provider(kGranule);
  VmmArena arena(provider, options(256 * MiB, MiB, 4 * MiB, /*release_delay_ns=*/200'000));
  const AllocatorStats s = churn_in_threads_and_check(arena, 200);
  EXPECT_EQ(s.bytes_reserved, provider.bytes_mapped());
  arena.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(VmmArena, FactoryTakesItsSizesFromSettings) {
  HostProvider provider(kGranule);
  Settings settings;
  settings.vmm_reserve = 8 * MiB;
  settings.vmm_grow_step = 2 * MiB;
  auto arena = make_vmm_arena(provider, settings);
  ASSERT_NE(arena, nullptr);
  EXPECT_STREQ(arena->name(), "vmm");
  void* p = arena->allocate(1000, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(provider.bytes_mapped(), 2 * MiB);
  EXPECT_EQ(arena->allocate(8 * MiB, 0), nullptr);  // only 8 MiB of address space, 1 KiB used
  arena->deallocate(p, 1000, 0);
  VmmArenaOptions defaults = VmmArenaOptions::from(Settings{});
  EXPECT_EQ(defaults.reserve, kDefaultVmmReserve);
  EXPECT_EQ(defaults.grow_step, kDefaultVmmGrowStep);
  EXPECT_EQ(defaults.release_threshold, kDefaultVmmReleaseThreshold);
  EXPECT_EQ(defaults.release_delay_ns, kDefaultVmmReleaseDelayNs);
  // GPUSHIM_VMM_RELEASE_THRESHOLD=0 gives back all idle memory: 0 is a value, not "not set" (it read
  // as the 8 GiB default before).
  Settings zero;
  zero.vmm_release_threshold = 0;
  zero.vmm_release_delay_ns = 0;
  EXPECT_EQ(VmmArenaOptions::from(zero).release_threshold, 0u);
  EXPECT_EQ(VmmArenaOptions::from(zero).release_delay_ns, 0u);
}

}  // namespace
}  // namespace gpushim
