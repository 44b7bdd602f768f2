// Size classes carved from slabs, with per-thread magazines in front of per-class depots (Bonwick's
// magazine layer, as in Solaris kmem and mimalloc's thread-local heaps).
//
// Small requests (up to max_small_size, default 1 MiB) are rounded up to a size class and served from
// slabs: provider ranges of whole granules (2 MiB over the driver; over tiered's arena, blocks of it,
// allocators/block_memory_provider.h), each cut into equal blocks of one class. Larger requests get a
// dedicated run of mapped granules.
//
// Why thread caches and not only per-class locks: bench/cpu_backends_bench, alloc+free pairs in batches
// of 64 live blocks, core-ns per pair on the 2-core dev VM (2026-11-25, two runs, best of 3 each):
//   4 KiB, 1/4/16 threads:        magazines 17-37 / 37-60 / 25-54;  per-class locks 47-76 / 99-136 / 91-112
//   256 B-64 KiB, 1/4/16 threads: magazines 16-20 / 24-29 / 26-30;  per-class locks 32-64 / 67-86 / 102-242
// Locks cost 2-4x on one core and up to 8x with 16 threads; a magazine hit touches only the calling
// thread's memory (its cache's lock is plain stores, allocators/owner_biased_lock.h: another thread
// takes it only to empty the magazines of a thread that stopped allocating, flush_every_thread). A
// thread's magazine per class holds at most kMagazineBytes; misses refill or flush half a magazine from
// the class depot under the class lock, so the depot lock is taken once per capacity/2 operations. Big classes (fewer than kMinMagazineBlocks per magazine) skip the cache:
// their cost is dominated by the work the program does with a block that large.
//
// The provider (the driver, on the GPU) is only called from depot paths on program threads, never from
// a thread-exit destructor: a dying thread's magazines go back to the depots as bookkeeping only.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "allocators/allocator.h"
#include "config/settings.h"
#include "providers/memory_provider.h"

namespace gpushim {

// Above 1 MiB a size class (up to 25% rounding) wastes more than a dedicated run of 2 MiB granules
// rounds away (at most one granule, and less than 50% only below 2 MiB).
inline constexpr std::size_t kDefaultSlabMaxSize = std::size_t{1} << 20;
// The class lookup table has one entry per kMinAlignment up to the largest class; 16 MiB keeps it at
// 64 KiB.
inline constexpr std::size_t kSlabMaxSizeLimit = std::size_t{16} << 20;
// One H100 VMM granule: the smallest physical unit the driver maps.
inline constexpr std::size_t kSlabTargetBytes = std::size_t{2} << 20;
// Empty slabs the slab backend (make_slab_allocator) keeps mapped, all classes
// together, before frees start unmapping them. Why bytes and not a slab or two per class: the router
// gives freed blocks back in fenced batches of up to 64 blocks / 64 MiB, so a class of big blocks
// (1 MiB: two per slab) sees up to 32 slabs go empty at once and is asked for them again right after.
// With one idle slab per class, every batch unmapped and remapped 31 slabs: 1 MiB pairs cost 42 us on
// the H100 (a map and an unmap are ~80 us together, docs/measured-facts.md) instead of ~0.4 us. 256 MiB covers four
// threads' full batches; it is cached memory (cuMemGetInfo counts it as free, and release_cached()
// drops it when an allocation misses), like the vmm arena's release threshold (8 GiB by default).
inline constexpr std::size_t kDefaultSlabIdleBytes = std::size_t{256} << 20;

class SlabAllocator final : public Allocator {
 public:
  // `thread_caches` = false leaves only the per-class locked depots (the bench compares both).
  // `idle_bytes`: empty slabs kept mapped (all classes together) beyond one per class.
  // `slab_bytes`: a slab's size, or `min_blocks_per_slab` blocks where that is larger (but no more than
  // kSlabTargetBytes or one block for that rule), rounded up to the provider's granularity (so 2 MiB
  // over the driver whatever is asked; tiered's arena-backed slabs are smaller).
  SlabAllocator(MemoryProvider& provider, std::size_t max_small_size, bool thread_caches = true,
                std::size_t idle_bytes = 0, std::size_t slab_bytes = kSlabTargetBytes,
                std::uint32_t min_blocks_per_slab = 1) noexcept;
  ~SlabAllocator() override;

  const char* name() const noexcept override { return "slab"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  // deallocate() of each block, the blocks of one class together, as one run: the calling thread's
  // magazine takes what it has room for (sending its top half first where the run does not fit, as a
  // lone free into a full magazine does) and the rest goes to the class's depot under one hold of its
  // lock. Block by block, a full magazine returned half of itself at every second free (4 blocks at 64
  // KiB), so a fenced batch of 32 blocks given back (router/block_hand_back.h) took the depot's lock 14
  // times, while 16 threads' refills queued on it (docs/perf-notes.md, "Fifty-first session").
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override;
  // Flushes the calling thread's magazines, asks every other thread to flush its own at its next call,
  // and unmaps every slab that holds no block in use and none in a magazine.
  std::size_t release_cached() noexcept override;
  AllocatorStats stats() const noexcept override;

  // Bytes of slabs that hold no block in use and none in a magazine, all classes (what release_cached
  // would give back now).
  std::size_t empty_slab_bytes() const noexcept { return empty_bytes_.load(std::memory_order_relaxed); }
  // Those and the blocks in the threads' magazines: free memory the slab keeps that its provider counts as
  // in use (tiered's arena, tiered_allocator.h).
  std::size_t free_bytes_kept() const noexcept;

  // For tests.
  std::size_t max_small_size() const noexcept { return max_small_size_; }
  std::size_t class_count() const noexcept { return classes_.size(); }
  std::size_t class_block_bytes(std::size_t index) const noexcept;
  std::size_t slab_count() const noexcept;
  // How many times a class's depot took back blocks (each one hold of its lock).
  std::uint64_t class_depot_returns(std::size_t index) const noexcept;
  void flush_this_thread() noexcept;
  // Every thread's magazines to the depots, each under its cache's lock (a remote lock: one membarrier
  // for each cache that holds blocks). release_cached() only asks other threads to flush at their next
  // call, which a thread that stopped allocating never makes; a context synchronization's hand-in
  // (tiered_allocator.h) takes them so.
  void flush_every_thread() noexcept;
  // Every slab that holds no block in use and none in a magazine, all classes, back to the provider;
  // returns the bytes. Unlike release_cached() it asks no thread to flush: after flush_every_thread()
  // that would only make each running thread flush once more for nothing.
  std::size_t release_empty_slabs() noexcept;
  // In a forked child (only the forking thread exists): cache locks other parent threads held are reset.
  void reset_locks_after_fork() noexcept;

  struct ThreadCache;  // defined in the .cpp; public for the thread-exit hook there
  // Thread exit: magazines back to the depots, counters folded in. No provider calls.
  void retire_thread_cache(ThreadCache* cache) noexcept;

 private:
  struct Slab {
    std::uintptr_t base = 0;
    std::vector<std::uint32_t> free_blocks;  // indices of free blocks, used as a stack
  };
  struct ClassDepot {
    std::mutex mutex;
    std::size_t block_bytes = 0;
    std::size_t slab_bytes = 0;        // whole granules
    std::uint32_t blocks_per_slab = 0;
    std::uint32_t magazine_capacity = 0;  // 0: this class bypasses the thread caches
    std::map<std::uintptr_t, Slab> slabs;  // by base
    std::set<std::uintptr_t> partial;      // slabs with a free block, lowest address first
    std::size_t empty_slabs = 0;
    std::uint64_t returns = 0;  // depot_return calls (class_depot_returns)
  };
  // Relaxed atomics: each shard is written by one thread (or under one lock) and summed by stats().
  struct CounterShard {
    std::atomic<std::uint64_t> allocations{0};
    std::atomic<std::uint64_t> deallocations{0};
    std::atomic<std::int64_t> bytes_in_use{0};
    std::atomic<std::int64_t> internal_waste{0};
    std::atomic<std::int64_t> magazine_bytes{0};  // free blocks sitting in thread magazines
  };

  std::size_t class_of(std::size_t bytes) const noexcept {
    return class_lookup_[(bytes - 1) / kMinAlignment];
  }
  ThreadCache* this_thread_cache() noexcept;
  ThreadCache* create_thread_cache() noexcept;
  void flush_cache(ThreadCache& cache, bool may_release) noexcept;
  std::size_t depot_take(ClassDepot& depot, void** out, std::size_t count) noexcept;
  void depot_return(ClassDepot& depot, void* const* blocks, std::size_t count, bool may_release) noexcept;
  bool grow_locked(ClassDepot& depot) noexcept;
  std::size_t release_empty_slabs_locked(ClassDepot& depot, std::size_t keep) noexcept;
  // Flushes this thread's magazines (`locked_own`: its cache, whose lock the caller holds) and gives
  // every empty slab back; true where any went.
  bool reclaim_for_retry(ThreadCache* locked_own = nullptr) noexcept;
  void* allocate_large(std::size_t bytes) noexcept;
  void deallocate_large(void* p, std::size_t bytes) noexcept;
  // Small blocks of class `c`: deallocate()'s one, or deallocate_batch's run of that class.
  void deallocate_class_run(std::size_t c, const BlockToFree* run, std::size_t count) noexcept;
  void* allocate_small(std::size_t bytes) noexcept;
  void fold_into(const CounterShard& from, CounterShard& to) noexcept;
  void add_to_stats(const CounterShard& shard, AllocatorStats& s, std::int64_t& in_use,
                    std::int64_t& waste, std::int64_t& magazines) const noexcept;
  void sample_peak_in_use() noexcept;
  void add_reserved(std::size_t bytes) noexcept;

  MemoryProvider& provider_;
  const std::size_t granularity_;
  const std::size_t max_small_size_;
  const bool thread_caches_;
  const std::size_t idle_bytes_;
  std::atomic<std::size_t> empty_bytes_{0};  // bytes of empty slabs, all classes (written under a depot lock)
  const std::uint64_t id_;  // never reused, so a stale thread-local entry can never match

  std::vector<std::size_t> classes_;
  std::vector<std::uint16_t> class_lookup_;          // (bytes-1)/kMinAlignment -> class index
  std::unique_ptr<ClassDepot[]> depots_;
  std::size_t magazine_slots_ = 0;                     // sum of magazine capacities

  std::atomic<std::uint64_t> flush_epoch_{0};
  std::vector<ThreadCache*> caches_;  // guarded by the process-wide cache registry mutex
  CounterShard shared_counters_;      // depot-only classes, large blocks, exited threads
  std::atomic<std::uint64_t> failed_allocations_{0};
  std::atomic<std::uint64_t> bytes_reserved_{0};
  std::atomic<std::uint64_t> peak_bytes_reserved_{0};
  mutable std::atomic<std::uint64_t> peak_bytes_in_use_{0};  // sampled by stats()

  std::mutex large_mutex_;
  std::unordered_map<std::uintptr_t, std::size_t> large_;  // base -> mapped bytes
};

// GPUSHIM_SLAB_MAX_SIZE (0 = kDefaultSlabMaxSize).
std::unique_ptr<Allocator> make_slab_allocator(MemoryProvider& provider, const Settings& settings);

}  // namespace gpushim
