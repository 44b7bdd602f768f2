// A device's vmm arena, split into several once its threads keep meeting on its lock (GPUSHIM_ARENA_SHARDS;
// sixteen by default: kDefaultArenaShards says why).
//
// Why: the arena's best fit and its address-ordered ranges live under one mutex (allocators/vmm_arena.h).
// Per-thread caches keep a thread's repeated sizes away from it, but a program whose threads allocate
// sizes that do not repeat (a server whose requests each have their own shapes) takes that mutex on
// both halves of nearly every pair above the caches' classes: 16 threads allocating log-uniform sizes
// from 256 B to 16 MiB on the H200 moved 0.3-0.5x the pairs per second of one thread, ~70% of their
// wall-clock time spent waiting for that lock (docs/perf-notes.md, twentieth session). Another lock in
// front of it only moves the queue, and a cache cannot hold every size; what removes the queue is threads
// that no longer share the free ranges.
//
// How: the first arena (the home) serves every thread, exactly as a lone VmmArena would, until a thread
// has found its lock held on kWaitsToLeave allocations in a row, each of another size than the one
// before it that waited and each within kWaitGapNs of it. That thread then takes an arena of its own
// reservation (one of shards - 1, handed out in turn, made at first use) and allocates there first. A
// program whose blocks come from one thread at a time (PyTorch, JAX: their own caches call the arena
// rarely) never leaves the home, so it places every block as before.
// Why sizes that change: that is the convoy the split shortens, of the sizes no cache in front holds.
// Threads that wait on one size each (fenced blocks of one size coming back in rounds, the caches'
// refills) gained 0.9-1.16x the pairs from eight arenas and paid up to 73% more peak (forty-second
// session); their waits, and frees' waits, say nothing about what a split would gain, so neither counts.
// - A block goes back to the arena whose reservation holds it, whichever thread frees it. A home block
//   that a thread which left frees gives back the chunks it leaves free, once no thread has allocated
//   from the home as its own for kHomeQuietNs (below says why).
// - An allocation takes, in order: a fit in its thread's arena; a fit in any other (the home first), so
//   idle memory of one arena serves another before anything grows; growth of its own arena.
// - The arenas count their mapped memory, its peak and their lock waits together (VmmArenaTotals), so a
//   NoNewPeakScope (allocators/growth_policy.h) refuses growth past the device's peak, not one arena's,
//   and stats() reports the device's peak reserved.
// - What it costs: free memory in one arena cannot merge with a neighbour in another, so a block that no
//   single arena fits may grow the device where one arena would have fit it; release_cached() (the
//   out-of-memory path) gives back idle memory of every arena before an allocation fails.
// A thread does not go back home: its working set lives in its arena.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "allocators/allocator.h"
#include "allocators/vmm_arena.h"
#include "config/settings.h"
#include "providers/memory_provider.h"

namespace gpushim {

// GPUSHIM_ARENA_SHARDS's default: sixteen arenas, the most. Off until the forty-third session: a thread
// left the home for any convoy, and where 16 threads each asked one size eight arenas gave 0.9-1.16x the
// pairs at up to 73% more peak. Since only allocations of changing sizes move a thread, those programs
// stay in the home (peaks within -2% to +9% of one arena's, the same pairs), and so do programs that
// allocate from one thread (PyTorch: the same peaks); 16 threads of mixed sizes moved 4-6.5x the pairs
// of one arena (1.2-1.4 -> 5.4-9.4 M per second) under eight, at 10-59% more peak (forty-third session).
// Why sixteen, not eight (forty-fourth session): an arena is made only when a leaving thread first takes
// it, so up to seven leaving threads get the same arenas under both; past that, eight made threads share.
// 16 threads of mixed sizes on vmm, where every pair reaches an arena, moved 1.2-1.5x the pairs under
// sixteen (7.3-7.8 -> 9.7-11.9 M per second, H100 and H200) at 0-4% more peak; on tiered, whose caches
// keep most pairs from the arenas, within the passes' spread (docs/perf-notes.md). Memory first, but not
// at 0.3x one thread's rate: a program that wants one arena sets 1.
inline constexpr int kDefaultArenaShards = 16;

class ArenaShards final : public Allocator {
 public:
  static constexpr std::size_t kMaxShards = 16;
  // A thread leaves the home after this many allocations of changing sizes that found the lock held,
  // each beginning to wait within kWaitGapNs of the end of the one before: two threads that meet now
  // and then stay; a thread of a convoy (a wait on nearly every call, a few microseconds of its own work
  // between) leaves within tens of microseconds. The gap counts from the end of the last wait, not its
  // start, so that waits that each sleep long (an oversubscribed machine) still count as in a row. Time,
  // not a count of the thread's calls: only a call that waited reads the clock and its size, so a call
  // that found the lock free counts nothing (the CPU guard, docs/perf-notes.md).
  static constexpr std::uint32_t kWaitsToLeave = 4;
  static constexpr std::uint64_t kWaitGapNs = 1000000;  // 1 ms
  // The home drains into the arenas of the threads that left. Why: an arena grows only where none fits,
  // and the home keeps what was mapped before the threads left (below the release threshold), so the
  // threads borrowed their larger blocks from it for good: 16 threads of mixed sizes on the H200 waited
  // on 77-84% of the home's lock takes, 11-30% of their time, while the other arenas' waits added up to
  // 0.2 s at most (docs/perf-notes.md, forty-fifth session). So a home block freed by a thread that left
  // gives its chunks back to the driver where it leaves them free, and the thread's own arena grows
  // instead, once: on host memory the borrowings fell from 19-39% of the allocations to 2.4-3.8% at 4-11%
  // more peak, with a map or unmap once in 20,000 pairs (bench/arena_placement_bench.cpp). Only the home:
  // every arena giving back at every foreign free moved memory through the driver between all of them
  // (59-63 calls per 1,000 pairs; on the H200 0.4-0.6 M pairs per second against 8-11).
  // Not while a thread still allocates from the home as its own (a producer at home, consumers elsewhere
  // freeing its blocks): its chunks would be unmapped under it and mapped again. Hence the quiet: no such
  // allocation for this long before a give-back.
  static constexpr std::uint64_t kHomeQuietNs = 100000000;  // 100 ms

  // `shards`: 2..kMaxShards arenas at most (the home and shards - 1 more). `waits_to_leave` 0: a thread
  // leaves at its first allocation; `wait_gap_ns` and `home_quiet_ns` other times (tests, the CPU bench).
  ArenaShards(MemoryProvider& provider, const VmmArenaOptions& options, std::size_t shards,
              std::uint32_t waits_to_leave = kWaitsToLeave, std::uint64_t wait_gap_ns = kWaitGapNs,
              std::uint64_t home_quiet_ns = kHomeQuietNs) noexcept;
  ~ArenaShards() override;
  ArenaShards(const ArenaShards&) = delete;
  ArenaShards& operator=(const ArenaShards&) = delete;
  struct ThreadEntry;  // defined in the .cpp; public for its thread-local table there

  const char* name() const noexcept override { return "vmm"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void* allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept override;
  bool can_allocate_without_growing() const noexcept override { return true; }
  const std::atomic<std::uint64_t>* lock_wait_counter() const noexcept override { return &totals_.lock_waits; }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  // Each arena's blocks under one hold of its lock, as a lone arena takes a batch: the fence queue's
  // rounds, the passed marked batches and the returned lists' flushes come this way, 32 blocks at a time
  // (router/block_hand_back.h). Without it every block took its arena's lock alone.
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override;
  std::size_t release_cached() noexcept override;
  void release_idle() noexcept override;
  // Any shard's answer: blocks held in front are of any shard, and every shard keeps the setting's threshold.
  bool release_due_with(std::uint64_t held_in_front) noexcept override;
  // Sums over the arenas; peak reserved is the device's (the arenas' mapped memory counted together);
  // peak in use is the sum of the arenas' peaks (an upper bound) once there is more than one.
  AllocatorStats stats() const noexcept override;

  std::size_t arenas() const noexcept { return created_.load(std::memory_order_acquire); }  // home included
  // The arena the calling thread allocates from (0: the home), for tests.
  std::size_t arena_of_this_thread() noexcept;
  // The arena whose reservation holds `p`, or -1.
  int arena_holding(const void* p) const noexcept;

 private:
  ThreadEntry& this_thread() noexcept;
  // Arena i < arenas(): published by created_'s release store after owned_[i] was set, never changed
  // after, so readers that loaded created_ need no lock.
  VmmArena* arena(std::size_t i) const noexcept { return owned_[i].get(); }
  VmmArena* make_arena() noexcept;  // the next arena, or nullptr (no reservation, or all made)
  // After an allocation of `bytes` by a home thread that found the lock held (detail::t_vmm_wait_began_ns):
  // counts it toward leaving where its size is not the last waited one's.
  void note_home_wait(ThreadEntry& entry, std::size_t bytes) noexcept;
  // After each allocation of a home thread: its wait, if it waited (the test mode moves the thread at its
  // first allocation).
  void after_home_allocation(ThreadEntry& entry, std::size_t bytes) noexcept;
  // An allocation from the home by a thread still at home, once another has left (kHomeQuietNs).
  void note_home_thread_allocation() noexcept {
    home_thread_allocations_.store(home_thread_allocations_.load(std::memory_order_relaxed) + 1,
                                   std::memory_order_relaxed);  // a lost count still counts as a change
  }
  // Whether a thread that left may give back the home's chunks now: no note_home_thread_allocation for
  // home_quiet_ns_ (reads the clock: only on frees of home blocks by threads that left).
  bool home_is_quiet() noexcept;
  // Whether the calling thread's frees of home blocks give their chunks back: it left, and the home is quiet.
  bool frees_drain_home() noexcept;
  void* allocate_from(std::size_t own, std::size_t bytes, StreamHandle stream) noexcept;
  // A fit without growing in arena `own`, then in the others.
  void* fit_anywhere(std::size_t own, std::size_t bytes, StreamHandle stream) noexcept;

  MemoryProvider& provider_;
  VmmArenaOptions options_;  // totals = &totals_
  const std::size_t shards_;
  const std::uint32_t waits_to_leave_;
  const std::uint64_t wait_gap_ns_;
  const std::uint64_t home_quiet_ns_;
  const std::uint64_t serial_;  // never reused: a thread's entry of a destroyed instance never matches
  // Before the arenas: they count into it until they are destroyed. Lines of its own (VmmArenaTotals):
  // the arenas' waits and maps write it, and every call reads owned_ and created_ below.
  VmmArenaTotals totals_;
  std::unique_ptr<VmmArena> owned_[kMaxShards];  // [0]: the home; null where there was no host memory for it
  std::atomic<std::size_t> created_{0};
  std::atomic<std::size_t> next_{0};  // leaving threads so far: the next takes arena 1 + next_ % (shards - 1)
  // One growth at a time for the device (allocate_from says why). Taken whenever no arena fits: off
  // created_'s line, which every call reads.
  alignas(64) std::mutex grow_mutex_;
  std::mutex make_mutex_;
  bool make_failed_ = false;     // under make_mutex_: a reservation was refused; no more arenas
  // home_is_quiet's: home threads write the first, threads that left the others; a line of their own, off
  // created_'s, which every call reads.
  alignas(64) std::atomic<std::uint64_t> home_thread_allocations_{0};
  std::atomic<std::uint64_t> home_allocations_seen_{0};
  std::atomic<std::uint64_t> home_quiet_since_ns_{0};
};

// GPUSHIM_ARENA_SHARDS arenas at most (kDefaultArenaShards unless set; 1: a lone VmmArena).
std::unique_ptr<Allocator> make_vmm_arena(MemoryProvider& provider, const Settings& settings);

}  // namespace gpushim
