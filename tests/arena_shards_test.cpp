// The vmm arena split into several for contended threads (allocators/arena_shards.h), over host memory.
#include "allocators/arena_shards.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "allocators/growth_policy.h"
#include "providers/host_provider.h"
#include "tests/held_provider.h"

namespace gpushim {
namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;
constexpr std::size_t kGranule = 64 * KiB;

VmmArenaOptions options() {
  VmmArenaOptions o;
  o.reserve = 256 * MiB;
  o.grow_step = MiB;
  o.release_threshold = 256 * MiB;
  return o;
}

// A home that is never quiet: a thread that left never gives back the home's chunks at its frees (for the
// tests of placement alone, whose frees would otherwise give back if the machine stalled them past the
// quiet, kHomeQuietNs).
constexpr std::uint64_t kNeverQuiet = ~std::uint64_t{0};

// Runs `body` on a new thread and waits for it: each thread starts at the home arena.
template <typename Body>
void on_new_thread(Body body) {
  std::thread t(body);
  t.join();
}

TEST(ArenaShards, AThreadThatNeverWaitsStaysInOneArenaAndPlacesAsALoneArena) {
  HostProvider shared_provider(kGranule), lone_provider(kGranule);
  ArenaShards shards(shared_provider, options(), 8);
  VmmArena lone(lone_provider, options());
  std::vector<void*> a, b;
  for (std::size_t i = 1; i <= 40; ++i) {
    a.push_back(shards.allocate(i * 37 * KiB, 0));
    b.push_back(lone.allocate(i * 37 * KiB, 0));
    if (i % 3 == 0) {
      shards.deallocate(a[i / 2], (i / 2 + 1) * 37 * KiB, 0);
      lone.deallocate(b[i / 2], (i / 2 + 1) * 37 * KiB, 0);
      a[i / 2] = b[i / 2] = nullptr;
    }
  }
  EXPECT_EQ(shards.arenas(), 1u);
  EXPECT_EQ(shards.arena_of_this_thread(), 0u);
  const auto base_a = reinterpret_cast<std::uintptr_t>(a[0]), base_b = reinterpret_cast<std::uintptr_t>(b[0]);
  for (std::size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i] == nullptr, b[i] == nullptr);
    if (a[i]) {
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a[i]) - base_a, reinterpret_cast<std::uintptr_t>(b[i]) - base_b);
    }
  }
  EXPECT_EQ(shards.stats().peak_bytes_reserved, lone.stats().peak_bytes_reserved);
  EXPECT_EQ(shards.stats().bytes_in_use, lone.stats().bytes_in_use);
}

TEST(ArenaShards, AThreadThatLeavesAllocatesFromItsOwnArenaAndFreesGoBackByAddress) {
  HostProvider provider(kGranule);
  ArenaShards shards(provider, options(), 4, /*waits_to_leave=*/0);
  void* home_block = shards.allocate(MiB, 0);  // this call moves the thread; its block is the home's
  ASSERT_NE(home_block, nullptr);
  EXPECT_EQ(shards.arena_holding(home_block), 0);
  EXPECT_EQ(shards.arena_of_this_thread(), 1u);
  void* own = shards.allocate(3 * MiB, 0);
  ASSERT_NE(own, nullptr);
  EXPECT_EQ(shards.arena_holding(own), 1) << "grown in its own arena: the home has no 3 MiB free";
  // Another thread frees both: each goes back to the arena that holds it.
  on_new_thread([&] {
    shards.deallocate(home_block, MiB, 0);
    shards.deallocate(own, 3 * MiB, 0);
  });
  const AllocatorStats s = shards.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.allocations, 2u);
  EXPECT_EQ(s.deallocations, 2u);
  EXPECT_EQ(s.bytes_reserved, provider.bytes_mapped());
  EXPECT_EQ(shards.release_cached(), s.bytes_reserved);
  EXPECT_EQ(provider.bytes_mapped(), 0u) << "release_cached gives back every arena's idle memory";
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// A batch (a fence queue's round, a returned list's flush) may hold blocks of every arena, in any order:
// each arena frees its own, and a block no arena holds is left alone, as deallocate() leaves it.
TEST(ArenaShards, ABatchGoesBackToTheArenasThatHoldItsBlocks) {
  HostProvider provider(kGranule);
  ArenaShards shards(provider, options(), 4, /*waits_to_leave=*/0);
  std::vector<BlockToFree> blocks;
  const auto take = [&](std::size_t bytes) {
    void* p = shards.allocate(bytes, 0);
    ASSERT_NE(p, nullptr);
    blocks.push_back({p, bytes, 0});
  };
  take(MiB);      // the home's: this call moves the thread to arena 1
  take(3 * MiB);  // arena 1's
  on_new_thread([&] {
    take(64 * KiB);  // the home's again (no arena has it free): this thread then moves to arena 2
    take(5 * MiB);   // arena 2's
  });
  ASSERT_EQ(shards.arenas(), 3u);
  ASSERT_EQ(shards.arena_holding(blocks[0].p), 0);
  ASSERT_EQ(shards.arena_holding(blocks[1].p), 1);
  ASSERT_EQ(shards.arena_holding(blocks[2].p), 0);
  ASSERT_EQ(shards.arena_holding(blocks[3].p), 2);
  int stranger = 0;
  blocks.push_back({&stranger, sizeof stranger, 0});
  on_new_thread([&] { shards.deallocate_batch(blocks.data(), blocks.size()); });
  const AllocatorStats s = shards.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.deallocations, 4u);
  EXPECT_EQ(shards.release_cached(), s.bytes_reserved);
  EXPECT_EQ(provider.bytes_mapped(), 0u) << "a block stayed in use in its arena";
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(ArenaShards, LeavingThreadsTakeTheArenasInTurn) {
  HostProvider provider(kGranule);
  ArenaShards shards(provider, options(), 3, /*waits_to_leave=*/0);
  std::vector<std::size_t> taken;
  for (int i = 0; i < 4; ++i)
    on_new_thread([&] {
      void* p = shards.allocate(64 * KiB, 0);
      taken.push_back(shards.arena_of_this_thread());
      shards.deallocate(p, 64 * KiB, 0);
    });
  EXPECT_EQ(taken, (std::vector<std::size_t>{1, 2, 1, 2}));
  EXPECT_EQ(shards.arenas(), 3u) << "never more than asked";
}

TEST(ArenaShards, IdleMemoryOfAnotherArenaServesBeforeAnyGrows) {
  HostProvider provider(kGranule);
  ArenaShards shards(provider, options(), 2, /*waits_to_leave=*/0, ArenaShards::kWaitGapNs, kNeverQuiet);
  // The home gets 8 MiB mapped by a thread that does not move (a lone first call moves it after).
  void* big = shards.allocate(8 * MiB, 0);
  ASSERT_NE(big, nullptr);
  ASSERT_EQ(shards.arena_holding(big), 0);
  shards.deallocate(big, 8 * MiB, 0);
  const std::size_t mapped = provider.bytes_mapped();
  // This thread now allocates from arena 1, which has nothing: the home's idle memory serves it.
  void* p = shards.allocate(4 * MiB, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(shards.arena_of_this_thread(), 1u);
  EXPECT_EQ(shards.arena_holding(p), 0) << "from the home, without growing";
  EXPECT_EQ(provider.bytes_mapped(), mapped);
  shards.deallocate(p, 4 * MiB, 0);
}

// One growth at a time for the device: a thread of another arena that needs memory while one grows waits
// for it, then looks in every arena again and takes a block freed meanwhile, instead of growing its own
// (with a stream, such blocks are those whose fences completed; without the wait, 16 threads at 16 MiB
// on the H200 reserved twice one arena's peak).
TEST(ArenaShards, ASecondGrowerWaitsForTheFirstAndTakesABlockFreedMeanwhile) {
  HostProvider host(kGranule);
  HeldProvider provider(host);
  ArenaShards shards(provider, options(), 4, /*waits_to_leave=*/0, ArenaShards::kWaitGapNs, kNeverQuiet);
  void* freed_later = shards.allocate(2 * MiB, 0);  // the home's, all it has mapped; this thread moves
  ASSERT_EQ(shards.arena_holding(freed_later), 0);
  const auto first_call_moves = [&] {  // a thread's first call: a block of the home, then its own arena
    void* p = shards.allocate(64 * KiB, 0);
    EXPECT_EQ(shards.arena_holding(p), 0);
    return p;
  };
  void* a_home = nullptr;
  void* b_home = nullptr;
  void* a_block = nullptr;
  void* b_block = nullptr;
  std::atomic<int> step{0};
  std::thread a([&] {
    a_home = first_call_moves();
    step = 1;
    while (step < 3) std::this_thread::yield();
    a_block = shards.allocate(2 * MiB, 0);  // grows its arena; held in the provider's map
  });
  std::thread b([&] {
    while (step < 1) std::this_thread::yield();
    b_home = first_call_moves();
    step = 2;
    while (step < 3 || !provider.mapping) std::this_thread::yield();  // a grows first
    b_block = shards.allocate(2 * MiB, 0);  // nothing fits: waits for a's growth
  });
  while (step < 2) std::this_thread::yield();
  const int maps_before = provider.maps;
  const std::size_t mapped_before = host.bytes_mapped();
  provider.hold = true;
  provider.mapping = false;
  step = 3;
  while (!provider.mapping) std::this_thread::yield();  // a maps
  // b either waits for a (one grower) or maps a piece of its own: give it the time to show which.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  while (provider.maps < maps_before + 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  shards.deallocate(freed_later, 2 * MiB, 0);
  provider.hold = false;
  a.join();
  b.join();
  ASSERT_NE(a_block, nullptr);
  EXPECT_NE(shards.arena_holding(a_block), 0) << "a grows its own arena";
  EXPECT_EQ(b_block, freed_later) << "the second grower mapped memory of its own";
  // a's growth alone: 2 MiB (beyond the 1 MiB step: two map calls, all but the last granule and that
  // granule, allocators/vmm_arena.cpp, map_growth).
  EXPECT_EQ(host.bytes_mapped(), mapped_before + 2 * MiB);
  EXPECT_EQ(provider.maps, maps_before + 2);
  for (void* p : {a_home, b_home}) shards.deallocate(p, 64 * KiB, 0);
  shards.deallocate(a_block, 2 * MiB, 0);
  shards.deallocate(b_block, 2 * MiB, 0);
  EXPECT_EQ(shards.stats().bytes_in_use, 0u);
}

TEST(ArenaShards, NoNewPeakScopeRefusesGrowthPastTheDevicesPeakNotOneArenas) {
  HostProvider provider(kGranule);
  ArenaShards shards(provider, options(), 2, /*waits_to_leave=*/0, ArenaShards::kWaitGapNs, kNeverQuiet);
  void* a = shards.allocate(4 * MiB, 0);  // home: peak 4 MiB (+ step rounding)
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(shards.arena_of_this_thread(), 1u);
  const std::size_t peak = shards.stats().peak_bytes_reserved;
  {
    NoNewPeakScope no_new_peak;
    // Arena 1 has mapped nothing, so its own peak is 0; the device's is `peak`, all of it live.
    EXPECT_EQ(shards.allocate(2 * MiB, 0), nullptr) << "would raise the device's peak";
  }
  EXPECT_EQ(provider.bytes_mapped(), peak);
  shards.deallocate(a, 4 * MiB, 0);
  {
    NoNewPeakScope no_new_peak;
    // Below the peak now (the home's 4 MiB idle): served from it, without a new peak.
    void* b = shards.allocate(2 * MiB, 0);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(shards.stats().peak_bytes_reserved, peak);
    shards.deallocate(b, 2 * MiB, 0);
  }
  void* c = shards.allocate(8 * MiB, 0);  // no scope: grows (its own arena, nothing fits 8 MiB)
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(shards.arena_holding(c), 1);
  EXPECT_EQ(shards.stats().peak_bytes_reserved, provider.bytes_mapped()) << "the device's peak: both arenas";
  EXPECT_GT(shards.stats().peak_bytes_reserved, peak);
  shards.deallocate(c, 8 * MiB, 0);
}

// The home drains into the arenas of the threads that left (ArenaShards::kHomeQuietNs): a home block that
// such a thread frees gives back the chunks it leaves free, a chunk another block still holds stays, a
// batch gives back as a single free does, and the thread's next allocation grows its own arena.
TEST(ArenaShards, AHomeBlockFreedByAThreadThatLeftGivesItsChunksBack) {
  HostProvider provider(kGranule);
  ArenaShards shards(provider, options(), 4, /*waits_to_leave=*/0, ArenaShards::kWaitGapNs, /*home_quiet_ns=*/0);
  void* first = shards.allocate(64 * KiB, 0);  // the home's: this call moves the thread
  void* neighbour = nullptr;
  on_new_thread([&] { neighbour = shards.allocate(64 * KiB, 0); });  // the home's, the same chunk
  ASSERT_EQ(shards.arena_holding(first), 0);
  ASSERT_EQ(shards.arena_holding(neighbour), 0);
  ASSERT_NE(shards.arena_of_this_thread(), 0u);
  const std::size_t mapped = provider.bytes_mapped();
  ASSERT_EQ(mapped, MiB) << "one step for both";
  shards.deallocate(first, 64 * KiB, 0);
  EXPECT_EQ(provider.bytes_mapped(), mapped) << "a chunk another block holds went back";
  std::vector<BlockToFree> batch{{neighbour, 64 * KiB, 0}};
  shards.deallocate_batch(batch.data(), batch.size());
  EXPECT_EQ(provider.bytes_mapped(), 0u) << "the home kept a chunk no block holds";
  void* own = shards.allocate(64 * KiB, 0);
  ASSERT_NE(own, nullptr);
  EXPECT_EQ(shards.arena_holding(own), static_cast<int>(shards.arena_of_this_thread())) << "grown at home";
  shards.deallocate(own, 64 * KiB, 0);
  EXPECT_EQ(shards.stats().bytes_in_use, 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// Not while a thread still allocates from the home as its own: a home block freed by a thread that left
// stays mapped until no such allocation came for the quiet, then goes back with its free neighbours.
TEST(ArenaShards, AHomeThatAThreadStillAllocatesFromKeepsItsChunks) {
  HostProvider provider(kGranule);
  constexpr std::uint64_t kQuietNs = 20000000;  // 20 ms
  ArenaShards shards(provider, options(), 4, ArenaShards::kWaitsToLeave, ArenaShards::kWaitGapNs, kQuietNs);
  void* x1 = shards.allocate(MiB, 0);  // this thread stays home: its calls never wait
  void* x2 = shards.allocate(MiB, 0);
  ASSERT_NE(x1, nullptr);
  ASSERT_NE(x2, nullptr);
  std::size_t left_for = 0;
  std::size_t mapped_after_first = 0, mapped_after_second = 0;
  std::atomic<int> step{0};
  std::thread leaver([&] {
    // Waited allocations of changing sizes in a row (the arena's lock would stamp them so) move it.
    for (std::size_t i = 0; i < ArenaShards::kWaitsToLeave; ++i) {
      detail::t_vmm_wait_began_ns = monotonic_ns();
      void* p = shards.allocate((64 + i) * KiB, 0);
      ASSERT_NE(p, nullptr);
      shards.deallocate(p, (64 + i) * KiB, 0);
    }
    left_for = shards.arena_of_this_thread();
    step = 1;
    while (step < 2) std::this_thread::yield();  // the home thread allocates
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    shards.deallocate(x1, MiB, 0);
    mapped_after_first = provider.bytes_mapped();
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // no home allocation meanwhile
    shards.deallocate(x2, MiB, 0);
    mapped_after_second = provider.bytes_mapped();
  });
  while (step < 1) std::this_thread::yield();
  void* z = shards.allocate(64 * KiB, 0);  // a home thread's allocation, once a thread left
  ASSERT_NE(z, nullptr);
  const std::size_t mapped = provider.bytes_mapped();
  step = 2;
  leaver.join();
  ASSERT_NE(left_for, 0u) << "the leaver stayed home";
  EXPECT_EQ(shards.arena_of_this_thread(), 0u);
  EXPECT_EQ(mapped_after_first, mapped) << "gave back while a thread allocates from the home";
  EXPECT_EQ(mapped_after_second, mapped - 2 * MiB) << "a quiet home kept x2 and its free neighbour x1";
  shards.deallocate(z, 64 * KiB, 0);
  EXPECT_EQ(shards.stats().bytes_in_use, 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

// The arena's lock itself tells: a thread whose call found the home's lock held (here held by another
// thread's release_cached(), inside the provider's unmap) moves, with one wait enough to leave.
TEST(ArenaShards, AThreadWhoseCallWaitedForTheHomesLockMoves) {
  HostProvider host(kGranule);
  HeldProvider provider(host);
  ArenaShards shards(provider, options(), 4, /*waits_to_leave=*/1);
  void* idle = shards.allocate(MiB, 0);  // mapped memory for release_cached() to give back
  ASSERT_NE(idle, nullptr);
  shards.deallocate(idle, MiB, 0);
  ASSERT_EQ(shards.arena_of_this_thread(), 0u);
  provider.hold_unmap = true;
  std::thread holder([&] { shards.release_cached(); });
  while (!provider.unmapping) std::this_thread::yield();
  std::size_t arena_after = 99;
  std::thread waiter([&] {
    void* p = shards.allocate(64 * KiB, 0);  // waits for the holder
    EXPECT_NE(p, nullptr);
    arena_after = shards.arena_of_this_thread();
    shards.deallocate(p, 64 * KiB, 0);
  });
  while (shards.lock_wait_counter()->load() == 0) std::this_thread::yield();  // the waiter is waiting
  provider.hold_unmap = false;
  holder.join();
  waiter.join();
  EXPECT_EQ(arena_after, 1u) << "a thread whose call waited for the home's lock stayed home";
  EXPECT_EQ(shards.arena_of_this_thread(), 0u) << "this thread never waited";
  EXPECT_EQ(shards.stats().bytes_in_use, 0u);
}

// The policy alone, on one thread: a call counts as waited when the arena set when its wait began
// (detail::t_vmm_wait_began_ns, set here as the arena's lock would). Only allocations count, each of
// another size than the last allocation that waited: waits that each begin long after the one before
// ended never add up, nor do frees' waits, and a waited allocation of that same size ends the row;
// kWaitsToLeave in a row move the thread.
TEST(ArenaShards, OnlyWaitedAllocationsOfChangingSizesInARowMoveAThread) {
  HostProvider provider(kGranule);
  ArenaShards shards(provider, options(), 4, ArenaShards::kWaitsToLeave, /*wait_gap_ns=*/1000000);
  // `later_ns`: how long after now each wait begins (a wait begins after the call before it ended).
  const auto waited_call = [&](std::uint64_t later_ns, std::size_t bytes) {
    detail::t_vmm_wait_began_ns = monotonic_ns() + later_ns;
    void* p = shards.allocate(bytes, 0);
    ASSERT_NE(p, nullptr);
    detail::t_vmm_wait_began_ns = monotonic_ns() + later_ns;
    shards.deallocate(p, bytes, 0);
  };
  // Each wait begins a second after now, so far more than 1 ms after the one before ended.
  for (std::size_t i = 0; i < 8; ++i) waited_call(1000000000ull, (64 + i) * KiB);
  EXPECT_EQ(shards.arena_of_this_thread(), 0u) << "waits far apart moved the thread";
  // Calls that did not wait between them change nothing either.
  for (int i = 0; i < 100; ++i) {
    void* p = shards.allocate(64 * KiB, 0);
    shards.deallocate(p, 64 * KiB, 0);
  }
  EXPECT_EQ(shards.arena_of_this_thread(), 0u);
  // One size, waited on every call in a row: the convoy of one size that the arenas do not shorten.
  for (int i = 0; i < 16; ++i) waited_call(0, 64 * KiB);
  EXPECT_EQ(shards.arena_of_this_thread(), 0u) << "waits on one size moved the thread";
  // Three of changing sizes, then one of the same size: the row ends.
  waited_call(0, 65 * KiB);
  waited_call(0, 66 * KiB);
  waited_call(0, 67 * KiB);
  waited_call(0, 67 * KiB);
  EXPECT_EQ(shards.arena_of_this_thread(), 0u) << "an allocation of the same size did not end the row";
  // Four of changing sizes in a row, their frees' waits between them: it moves.
  waited_call(0, 68 * KiB);
  waited_call(0, 69 * KiB);
  waited_call(0, 70 * KiB);
  EXPECT_EQ(shards.arena_of_this_thread(), 0u) << "three waits in a row are not four";
  waited_call(0, 71 * KiB);
  EXPECT_EQ(shards.arena_of_this_thread(), 1u) << "four waits of changing sizes in a row kept the thread home";
  EXPECT_EQ(shards.arenas(), 2u);
}

TEST(ArenaShards, FactorySplitsByDefaultAndMakesALoneArenaForOneShard) {
  HostProvider provider(kGranule);
  Settings settings;
  settings.vmm_reserve = 64 * MiB;
  auto by_default = make_vmm_arena(provider, settings);
  const auto* split = dynamic_cast<ArenaShards*>(by_default.get());
  ASSERT_NE(split, nullptr) << "kDefaultArenaShards arenas unless GPUSHIM_ARENA_SHARDS says otherwise";
  EXPECT_EQ(split->arenas(), 1u) << "the other arenas are made when a thread first leaves";
  EXPECT_STREQ(by_default->name(), "vmm");
  settings.arena_shards = 1;
  auto lone = make_vmm_arena(provider, settings);
  EXPECT_NE(dynamic_cast<VmmArena*>(lone.get()), nullptr);
  settings.arena_shards = 4;
  EXPECT_NE(dynamic_cast<ArenaShards*>(make_vmm_arena(provider, settings).get()), nullptr);
}

}  // namespace
}  // namespace gpushim
