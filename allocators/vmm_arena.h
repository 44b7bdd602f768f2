// The growable VMM arena: one large virtual range reserved once per device, physical memory mapped into
// it in steps as the program needs it, blocks carved by best fit with coalescing, idle physical memory
// given back above a threshold. Memory comes only from a MemoryProvider, so the same code runs on the
// GPU (CudaPeerProvider) and on host memory (HostProvider) in the CPU tests.
//
// Why a VMM arena: docs/measured-facts.md measured cudaMalloc at 2-100 us and cudaFree at up to 640 us per call, while
// mapping costs 45-75 us per step regardless of the block count it serves. Reserving address space is
// nearly free (14 us for 1 TiB), so one reservation per device lets a large block always be served from
// contiguous addresses by mapping more memory right behind the free tail, without moving anything.
//
// Structure (all inside one mutex but the provider's map calls; see vmm_arena.cpp for the layout;
// allocators/arena_shards.h splits a device whose threads keep meeting on that mutex into several arenas):
// - The reservation is covered, in address order, by ranges: live blocks, free ranges (mapped, unused)
//   and unmapped ranges. Neighbouring free ranges are always merged, so a free range is maximal.
// - Free ranges are indexed by size in TLSF bins (two-level segregated fit, 32 bins per power of two),
//   which finds a fitting range in O(1) with bitmaps; within the bins searched, the smallest fitting
//   range wins, so the fit is best to within 1/32 of the size.
// - A free range right below unmapped space (the wilderness: the free top of the mapped memory, or the
//   free memory below a chunk given back) is kept out of the bins, in a short list, and used only when
//   no binned range fits; growth extends it. Taking it for a block that a hole could hold leaves the
//   hole behind: on a KV cache grown by torch.cat, where each new block is one row larger than the one
//   it replaces, plain best fit left a trail of holes each one row too small and reserved 1.29x the
//   peak live, against 1.06x with the wilderness last (docs/perf-notes.md, "Fit on a growing KV cache").
// - Live blocks are found by address through an intrusive hash table; range nodes come from a pool, so
//   allocate/free do not call malloc except when the pool or table grows (amortized, rare).
// - A block freed right after it was carved, with no other call between, is not merged at once: if the
//   next call asks for a block of its size, it is handed out again as it is (the arena is then exactly
//   as that carve left it); any other call first merges it as a free always did. A program that
//   allocates and frees one large block in a loop skips the merge and the split at every turn
//   (vmm_arena.cpp, "A split undone").
// - Physical memory is tracked as chunks, one per provider map() call, because the driver can only unmap
//   a whole mapping. A chunk goes back when no live block touches it. A growth beyond a step (a large
//   block's need) is two chunks, its last granule apart: the next large block starts in that granule,
//   and would otherwise keep the whole growth mapped (map_growth).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "allocators/adaptive_mutex.h"
#include "allocators/allocator.h"
#include "config/settings.h"
#include "diagnostics/monotonic_clock.h"
#include "providers/memory_provider.h"

namespace gpushim {

namespace detail {
// When this thread's last call to an arena of several (VmmArenaOptions::totals set) that found the
// arena's lock held began to wait (monotonic_ns); 0: none since whoever reads it cleared it
// (allocators/arena_shards.h: a thread that keeps finding the lock held moves to an arena of its own).
// Only a call that waits reads the clock, and a lone arena's never does: nobody would read it.
inline thread_local std::uint64_t t_vmm_wait_began_ns __attribute__((tls_model("initial-exec"))) = 0;
}  // namespace detail

// 256 GiB of address space per device: larger than the memory of any current GPU (H200: 141 GB,
// B200: 192 GB) so the arena never runs out of addresses before memory, and cheap (reserving 1 TiB took
// 14 us on the H100). Falls back to smaller reservations when the provider refuses.
inline constexpr std::size_t kDefaultVmmReserve = std::size_t{256} << 30;
// 8 MiB per growth: one map step costs ~45 us at 2 MiB and ~75 us at 512 MiB (cuMemCreate + cuMemMap +
// cuMemSetAccess, docs/measured-facts.md), so 2 MiB steps would pay that every 2 MiB of growth; 8 MiB pays
// it 4x less often (a 10 GiB arena grows in ~1,300 steps, ~70 ms once). The step's unused tail sits on
// top of the peak: 32 MiB steps cost the CNN of bench/torch_cnn.py 25-30 MiB of peak on the H200 and in a
// host replay of its trace (7.57 GiB reserved against 7.54 at 8 MiB; 2-4 MiB gained nothing more).
// Larger requests map what they need.
inline constexpr std::size_t kDefaultVmmGrowStep = std::size_t{8} << 20;
// kDefaultVmmReleaseThreshold (config/settings.h, where the setting's struct holds it: its 0 is a value):
// keep up to 8 GiB of idle physical memory mapped. Measured on the H100 (PyTorch transformer, sequence
// length cycling 64..512): live bytes swing by ~6 GiB from step to step, and with a 1 GiB threshold the
// arena unmapped and remapped 1,300 times in 8 steps; each unmap must also wait for the GPU (cuMemUnmap
// is not stream-ordered). Idle memory does not raise the peak, cuMemGetInfo reports it as free, and the
// out-of-memory path gives it all back before failing.
//
// kDefaultVmmReleaseDelayNs (config/settings.h, likewise), 1 s: memory above the threshold goes back
// only once it stayed idle this long: the least the arena held
// free over that time, less the threshold. Given back at every free instead, memory a program frees and
// soon takes again was unmapped and mapped again: one thread at 1 GiB with a stream, after 16 threads
// had held 16 GiB (so the arena maps below its peak without waiting), made ~700 pairs of 1 GiB calls a
// second on the H200, ~2 ms each pair, and its mean pair rose from ~0.3 to 1.5-14 us (twenty-sixth
// session, docs/perf-notes.md). The release happens in a free after the delay (the router asks every
// 4,096 frees, and after a cuCtxSynchronize, too: Allocator::release_idle). What the delay keeps is
// bounded: idle memory above twice the threshold goes back at once, as before. Kept without that bound,
// 16 threads with a stream each cycling 1 GiB blocks mapped the whole H200 (139 GiB for 16 live blocks,
// against 24-27 GiB): the memory kept let them go faster, which put more blocks behind their fences,
// which grew the arena.

// What the arenas of one device count together (allocators/arena_shards.h): the memory they map, its
// peak, and the calls that found a lock held. A lone arena counts into its own. Lines of their own:
// every unlock reads the first two (store_hints), every wait adds to the third, and neither may make a
// miss of the fields beside the struct that every call reads (ArenaShards' arenas).
struct alignas(64) VmmArenaTotals {
  std::atomic<std::size_t> mapped{0};
  std::atomic<std::size_t> peak_mapped{0};
  alignas(64) std::atomic<std::uint64_t> lock_waits{0};
};

struct VmmArenaOptions {
  std::size_t reserve = kDefaultVmmReserve;
  std::size_t grow_step = kDefaultVmmGrowStep;
  std::size_t release_threshold = kDefaultVmmReleaseThreshold;
  std::uint64_t release_delay_ns = kDefaultVmmReleaseDelayNs;  // 0: above the threshold at every free
  // Shared with the other arenas of a device; null: the arena's own. A NoNewPeakScope then refuses growth
  // past the peak of all of them together, not of this one (allocators/growth_policy.h).
  VmmArenaTotals* totals = nullptr;

  // A reserve or grow step of 0 means "not set": the default above is used. The threshold and the
  // delay are taken as they are (0 is a value for both).
  static VmmArenaOptions from(const Settings& settings) noexcept;
};

class VmmArena final : public Allocator {
 public:
  // `provider` must outlive the arena. Reserves the address space at once; if no reservation can be had,
  // every allocation fails (returns nullptr).
  VmmArena(MemoryProvider& provider, const VmmArenaOptions& options) noexcept;
  ~VmmArena() override;  // unmaps every chunk and releases the reservation
  VmmArena(const VmmArena&) = delete;
  VmmArena& operator=(const VmmArena&) = delete;

  const char* name() const noexcept override { return "vmm"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void* allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept override;
  bool can_allocate_without_growing() const noexcept override { return true; }
  const std::atomic<std::uint64_t>* lock_wait_counter() const noexcept override { return &totals_->lock_waits; }
  std::uint64_t lock_waits() const noexcept { return totals_->lock_waits.load(std::memory_order_relaxed); }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override;  // one lock for all
  // As deallocate_batch(), and then the mapped chunks wholly inside the free range each block joined go
  // back to the provider, whatever the threshold: the home arena's blocks that a thread which left it
  // frees (allocators/arena_shards.h), so that its own arena grows in the home's place.
  void deallocate_giving_back(BlockToFree* blocks, std::size_t count) noexcept;
  std::size_t release_cached() noexcept override;
  void release_idle() noexcept override;
  // Counts `held_in_front` as idle with what the arena caches, at most once a delay (held_taken_ns_).
  bool release_due_with(std::uint64_t held_in_front) noexcept override;
  AllocatorStats stats() const noexcept override;

  std::size_t reserved_bytes() const noexcept { return reserve_bytes_; }  // address space held
  // True when `p` lies in the arena's reservation (fixed at construction, so no lock).
  bool contains(const void* p) const noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    return a >= base_ && a - base_ < reserve_bytes_;
  }
  std::size_t grow_step() const noexcept { return grow_step_; }
  std::size_t chunk_count() const noexcept;  // provider mappings currently held

  struct Range;  // defined in vmm_arena.cpp

 private:
  static constexpr int kSecondLevelBits = 5;  // 32 bins per power of two: fit within 1/32
  static constexpr int kSecondLevels = 1 << kSecondLevelBits;
  static constexpr int kFirstLevels = 41;     // sizes below 2^53 bytes; reservations are capped at 2^47

  // Under mutex_: best fit from mapped memory. nullptr when nothing fits; then, where `may_grow` and
  // `grow_for` is given, *grow_for is the block that growth must make fit (allocate_growing maps it),
  // or 0 where growth is refused (a NoNewPeakScope at the peak). `may_grow` without `grow_for`: growth
  // was tried; the last, unbounded search.
  void* allocate_locked(std::size_t bytes, bool may_grow, std::size_t* grow_for) noexcept;
  // Under mutex_: the counters of a block handed out (it becomes just_carved_) or freed.
  void count_carved(Range* r, std::size_t bytes) noexcept;
  void count_freed(Range* r) noexcept;
  // Under mutex_: deallocate()'s work on one block (deallocate_batch's on each); `give_back_chunks`:
  // deallocate_giving_back's.
  void deallocate_locked(void* p, bool give_back_chunks) noexcept;
  // Takes mutex_ once for all `count` blocks: deallocate_batch's and deallocate_giving_back's body.
  void deallocate_under_one_lock(BlockToFree* blocks, std::size_t count, bool give_back_chunks) noexcept;
  // Without mutex_: maps memory for `bytes` and allocates from it (vmm_arena.cpp says why outside it).
  void* allocate_growing(std::size_t bytes) noexcept;
  // Node pool.
  Range* new_range() noexcept;
  void recycle(Range* r) noexcept;
  // Size index of free ranges.
  void insert_free(Range* r) noexcept;
  void remove_free(Range* r) noexcept;
  Range* find_fit(std::size_t block, int scan_limit) const noexcept;
  Range* smallest_fitting(Range* head, std::size_t block, int limit) const noexcept;
  Range* wilderness_fit(std::size_t block) const noexcept;
  // Live blocks by address.
  void hash_insert(Range* r) noexcept;
  Range* hash_remove(std::uintptr_t start) noexcept;
  void maybe_grow_hash() noexcept;
  // Unmapped ranges.
  void insert_unmapped(Range* r) noexcept;
  void remove_unmapped(Range* r) noexcept;
  // Address order.
  void link_before(Range* r, Range* next) noexcept;
  void unlink(Range* r) noexcept;
  Range* merge_free_neighbours(Range* r) noexcept;  // r is free and not in a bin
  // Under mutex_, before a call reads or changes the ranges (but for the two that undo a split): the
  // block freed unmerged, if any, merged as deallocate() merges a block; and no block counts as just
  // carved any more. allocate_growing's claim follows a search that did it under the same lock.
  void merge_deferred_free() noexcept;
  // Physical memory.
  // Under mutex_: takes the unmapped space that growth for `block` maps (a step, or with `need_only` what
  // the block needs; `whole_block`: all of the block, not joined to free neighbours) out of the unmapped
  // list, counted as mapped; nullptr when there is none. *was_least: no smaller piece would do.
  Range* claim_growth(std::size_t block, bool whole_block, bool need_only, bool* was_least) noexcept;
  // The peaks as they were before a growth's claim: a refused piece restores them.
  struct PeaksBefore {
    std::size_t arena;   // peak_mapped_
    std::size_t device;  // totals_->peak_mapped
  };
  // Under mutex_, once the provider mapped the claimed piece (or refused it): the piece becomes free
  // memory (true), or unmapped space again with the peaks as they were before the claim.
  bool finish_growth(Range* piece, bool mapped, const PeaksBefore& peaks_before) noexcept;
  // Maps a claimed growth, outside the lock; beyond a step, as two chunks (vmm_arena.cpp says why).
  bool map_growth(std::uintptr_t start, std::size_t bytes) noexcept;
  // The first chunk of a growth of `bytes`: all of it, or beyond a step all but its last granule.
  std::size_t first_chunk_of_growth(std::size_t bytes) const noexcept {
    return bytes > grow_step_ && bytes >= 2 * granularity_ ? bytes - granularity_ : bytes;
  }
  // Mapped memory counted into (or out of) the device's totals.
  void count_mapped(std::size_t bytes) noexcept;
  void count_unmapped(std::size_t bytes) noexcept { totals_->mapped.fetch_sub(bytes, std::memory_order_relaxed); }
  // The device's peak would rise if `block` more were mapped (any arena of it).
  bool raises_device_peak(std::size_t block) const noexcept {
    return totals_->mapped.load(std::memory_order_relaxed) + block > totals_->peak_mapped.load(std::memory_order_relaxed);
  }
  Range* merge_unmapped(Range* hole) noexcept;  // hole becomes unmapped, joined to unmapped neighbours
  void refile_free_below(Range* r) noexcept;    // the free range right below r, filed again
  Range* release_chunk(Range* free_range, std::map<std::uintptr_t, std::size_t>::iterator chunk) noexcept;
  // Gives back the chunks inside `free_range` while more than `keep` bytes are cached.
  std::size_t release_chunks_inside(Range* free_range, std::size_t keep) noexcept;
  // Gives back, in address order, each mapped chunk a free range covers while it fits in what is left of
  // `budget`; returns the bytes given back.
  std::size_t release_free_chunks(std::size_t budget) noexcept;
  // In a free that left more than the threshold cached: gives back what stayed idle over the delay.
  void release_idle_memory() noexcept;
  // Whether a free may give memory back now: more than the threshold cached, and either more than
  // prompt_release_above_ or the idle window's delay passed (then it reads the clock).
  bool release_may_be_due() const noexcept;
  bool idle_window_passed(std::uint64_t now_ns) const noexcept { return now_ns - idle_window_began_ns_ >= release_delay_ns_; }
  // The piece a growth is mapping counts as mapped but is not free yet.
  std::size_t cached_bytes() const noexcept { return mapped_ - live_block_bytes_ - growing_bytes_; }

  MemoryProvider& provider_;
  const std::size_t granularity_;
  const std::size_t grow_step_;
  const std::size_t release_threshold_;
  const std::uint64_t release_delay_ns_;
  // Idle memory above it goes back at once: the threshold without a delay, twice it with one.
  const std::size_t prompt_release_above_;
  VmmArenaTotals* const totals_;  // own_totals_, or the device's (calls that found mutex_ held counted there)
  const bool stamps_waits_;       // one of a device's arenas: a wait stamps detail::t_vmm_wait_began_ns
  // Set by the constructor, read without the lock by contains() on every free of a device's arenas.
  std::uintptr_t base_ = 0;
  std::size_t reserve_bytes_ = 0;

  // Three cache lines, each written by another kind of call, so that the fields above, which every
  // thread reads, are never on a line another thread writes: mutex_ (every lock and unlock), the hints
  // (every unlock; read without the lock by other threads' probes), and the fields under the lock.
  // Beside mutex_, base_ made every contains() a miss while the arena was busy (H200 wall-clock profile,
  // docs/perf-notes.md, forty-seventh session).
  alignas(64) mutable AdaptiveMutex mutex_;
  // cached_bytes() as the last allocate or deallocate left it (written as their lock is let go): read
  // without the lock by allocate_without_growing. Free memory only grows under that lock, so a value
  // below a request means nothing mapped could hold it, but for a deallocation racing the read.
  alignas(64) std::atomic<std::size_t> free_bytes_hint_{0};
  // What an allocation under a NoNewPeakScope could get, as the last lock holder left it: the free bytes
  // plus the unmapped room below the peak. Read without the lock by allocate(): below a request, the
  // arena could only answer nullptr after the lock (the next ask finds what a racing free adds).
  std::atomic<std::size_t> below_peak_hint_{0};
  void store_hints() noexcept {
    const std::size_t free_bytes = cached_bytes();
    if (free_bytes < least_cached_in_window_) least_cached_in_window_ = free_bytes;
    free_bytes_hint_.store(free_bytes, std::memory_order_relaxed);
    // The device's room below its peak: other arenas change both under their own locks.
    const std::size_t mapped = totals_->mapped.load(std::memory_order_relaxed);
    const std::size_t peak = totals_->peak_mapped.load(std::memory_order_relaxed);
    below_peak_hint_.store(free_bytes + (peak > mapped ? peak - mapped : 0), std::memory_order_relaxed);
  }
  // mutex_ for allocate and deallocate, counting the calls that found it held. try_lock first costs
  // what lock() does (one compare-and-swap) when it is free. A guard of its own, inline: a returned
  // unique_lock was a call and an owns-flag per operation (~12 instructions, the CPU guard).
  class CountingLock {
   public:
    explicit CountingLock(VmmArena& arena) noexcept : arena_(arena) {
      if (!arena_.mutex_.try_lock()) {
        arena_.totals_->lock_waits.fetch_add(1, std::memory_order_relaxed);
        if (arena_.stamps_waits_) detail::t_vmm_wait_began_ns = monotonic_ns();
        arena_.mutex_.lock();
      }
    }
    ~CountingLock() {
      arena_.store_hints();
      arena_.mutex_.unlock();
    }
    CountingLock(const CountingLock&) = delete;
    CountingLock& operator=(const CountingLock&) = delete;

   private:
    VmmArena& arena_;
  };
  // Under mutex_: when the current idle window began, and the least cached_bytes() since (store_hints
  // lowers it at every unlock). 0 at first: nothing counts as idle before a window has passed.
  alignas(64) std::uint64_t idle_window_began_ns_ = 0;
  std::size_t least_cached_in_window_ = 0;
  // Under mutex_: when release_due_with last answered true. The blocks it brings in go back only once
  // they stayed idle through a window of their own, so asking their keepers again within a delay would
  // only empty their lists for nothing; the window's restart cannot bound it (it restarts only where
  // more than the threshold is cached).
  std::uint64_t held_taken_ns_ = 0;
  // Under mutex_ (at most one of the two set). just_carved_: the block the last call carved, while no
  // call has come since. freed_unmerged_: that block, freed by the next call and not yet merged: counted
  // free (cached_bytes() has it), still in the hash and not in a bin (vmm_arena.cpp, "A split undone").
  Range* just_carved_ = nullptr;
  Range* freed_unmerged_ = nullptr;
  Range* head_ = nullptr;       // first range in address order
  Range* unmapped_ = nullptr;   // list of unmapped ranges (few: holes left by give-back, and the tail)
  Range* wilderness_ = nullptr; // free ranges right below an unmapped one (at most one per unmapped range)
  Range* spare_ = nullptr;      // node pool
  std::vector<std::unique_ptr<Range[]>> range_blocks_;
  std::uint64_t first_level_map_ = 0;
  std::uint32_t second_level_map_[kFirstLevels] = {};
  Range* bins_[kFirstLevels][kSecondLevels] = {};
  std::unique_ptr<Range*[]> buckets_;
  int bucket_bits_ = 0;
  std::size_t live_count_ = 0;
  std::map<std::uintptr_t, std::size_t> chunks_;  // start -> bytes, one per provider map() call

  // Counters (under mutex_).
  std::uint64_t allocations_ = 0, deallocations_ = 0, failed_ = 0;
  std::size_t bytes_in_use_ = 0, peak_bytes_in_use_ = 0;
  std::size_t live_block_bytes_ = 0;  // sum of block sizes (rounded) of live blocks
  std::size_t mapped_ = 0, peak_mapped_ = 0;  // this arena's own (totals_ has the device's)
  std::size_t growing_bytes_ = 0;  // the piece a growth maps outside the lock (claim_growth)

  // One growth at a time; taken before mutex_, never while holding it.
  std::mutex grow_mutex_;
  VmmArenaTotals own_totals_;  // a lone arena's totals
};

}  // namespace gpushim
