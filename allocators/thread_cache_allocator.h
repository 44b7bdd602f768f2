// Per-thread caches of freed blocks in front of a shared backend (a magazine layer, as Bonwick's
// magazines in Solaris kmem and mimalloc's thread-local heaps).
//
// Why: the shared backends take a lock on every call (the vmm arena has one for all threads), so with
// several threads a pair costs a cache-line transfer or a sleep, and on one thread the arena's search is
// ~600 instructions (docs/perf-notes.md). A program's hot loop frees and asks again for the same sizes;
// a block freed by a thread is kept in that thread's cache and handed out again on its next request of
// the same size class, touching only the calling thread's memory.
//
// Size classes: requests up to kMaxCachedBytes are rounded up to a class (512 B steps to 4 KiB, then
// 8 classes per doubling: at most 12.5% rounding) and the backend is asked for the class size, so a
// cached block of class C serves exactly the requests that round to C.
//
// Large slots: a larger block is kept by the exact size the backend was asked for (no rounding), in up
// to kLargeSlots slots per thread and kMaxLargeBytesPerThread bytes, the oldest leaving first; a hit is
// a request of exactly that size. Without them every such pair took the arena's one mutex: 16 threads
// convoyed on it (33 us a pair per thread at 4-256 MiB on the H200, docs/perf-notes.md). What they must
// not do is cost memory: a parked block is free memory the backend cannot see, and on PyTorch workloads
// (one thread allocates) parking raised the GPU peak by 0.06-0.21 GiB although the rules below keep
// the backend from growing for it (placements differ when blocks come back later and in another order).
// So by default (LargeSlots::while_contended) a thread parks only while parking spares it a wait: from
// a large call of its own during which the backend's lock was found held (Allocator::lock_wait_counter(),
// counted by the arena) until kCalmCallsToStopParking of its large backend calls in a row found it free.
// A program whose large blocks come from one thread at a time never parks and places every block as
// with no cache; threads that fight over the arena park. When parking:
// - a miss of any size first gives the thread's own parked blocks back: the backend sees the thread's
//   frees and requests in the program's order (a KV cache grown by torch.cat asks for a bit more than
//   the block it just freed, which the arena merges with its neighbours to serve);
// - while any thread (or the depot) may hold parked blocks, a miss asks the backend for memory it holds
//   already (allocate_without_growing) and, if it has none, empties every thread's large slots into
//   it before it may grow. A thread whose block was taken so may grow the backend at its next request
//   of that size, rather than take in turn: else threads looping on one size, more of them than blocks
//   mapped, would take each other's blocks at every miss, for good. A cache counts as holding blocks
//   from its first park until a flush, not until a hit empties it, so steady pairs write no shared
//   cache line;
// - only over backends that can_allocate_without_growing() (the vmm arena, tiered's arena tier): the
//   slab unmaps a large block at its free, so there a parked block would hold memory; they pass through.
// Blocks parked while another thread places its own act as if still live, so placements may differ
// from a run without the cache; growth comes from them only where a thread asks again for a size taken
// from it (tests/thread_cache_allocator_test.cpp, tests/kv_cache_fit_test.cpp).
//
// Bounds of the classes per thread: kMaxBlocksPerClass blocks and kClassBytes of one class, kMaxBytesPerThread in all.
// kMaxBlocksPerClass is the router's fence batch (router/free_fence_queue.h, kBatchMaxBlocks): a fenced
// batch of small blocks that comes back at once fits the freeing thread's cache. A miss asks the
// backend for one block and a full cache passes the freed block on: moving blocks in batches through
// the cache only cost copies (measured: docs/perf-notes.md), and a miss that took several blocks under
// one arena lock left 16 threads with a stream each where they were (what bounds them is a fenced
// block's round trip, not the arena's lock: docs/perf-notes.md, thirty-eighth session). Blocks handed
// back together do go to the backend in one call (deallocate_batch).
//
// Cross-thread flush: each thread cache has a lock its owner takes on each call with plain stores and
// no locked instruction (allocators/owner_biased_lock.h: the remote side pays, with one membarrier(2));
// release_cached(), from any thread (the out-of-memory path), takes each cache's lock in turn and
// empties it (classes and large slots), so memory other threads hold comes back at once, not at their
// next call. A context synchronization does the same where the backend's release is due counting the
// cached blocks (release_due_with, then hand_in_kept_blocks): at most once a release delay, so a thread
// that stopped allocating keeps nothing for good, and a running one refills its cache from the backend
// once a delay at most. A thread that exits moves its blocks to a
// shared depot (bookkeeping only: no backend or driver call from a thread-exit destructor, which may run
// after the program's CUDA teardown); misses of every thread take from the depot first (large ones by exact size), and
// release_cached() empties it. A fenced free reaches this layer when its freeing thread asks for
// another size (router/returned_blocks.h), or from the polling thread (its own blocks, those of
// threads that exited, and what over-full returned lists do not take): the block joins that thread's
// cache.
//
// Cached blocks, parked large ones included, count as the backend's cached memory (stats().bytes_cached,
// so cuMemGetInfo reports them as free: a request that needs them gets them), not as in use; bytes in
// use are the requested sizes and the rounding to a class is internal waste. Calls count once: a hit
// here, a miss in the backend. Only for backends that are not stream-ordered (the provider backends):
// a cached block carries no stream.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "allocators/adaptive_mutex.h"
#include "allocators/allocator.h"
#include "config/settings.h"

namespace gpushim {

class ThreadCacheAllocator final : public Allocator {
 public:
  // Largest request cached: the slab's largest class; above it a block's cost is the work the program
  // does with it, and a cached 16 MiB block per thread and class would pin too much.
  static constexpr std::size_t kMaxCachedBytes = std::size_t{1} << 20;
  static constexpr std::size_t kMaxBlocksPerClass = 256;
  static constexpr std::size_t kClassBytes = std::size_t{2} << 20;        // one class, one thread
  static constexpr std::size_t kMaxBytesPerThread = std::size_t{4} << 20;  // all classes, one thread
  // 512 B .. 4 KiB in 512 B steps (8), then 8 per doubling from 4 KiB to 1 MiB (8 x 8).
  static constexpr std::size_t kClassCount = 72;
  // Above kMaxCachedBytes: exact-size slots, a few per thread (see above). Four: a loop that frees a few
  // large tensors of different sizes per step (activations, their gradients) finds each again.
  static constexpr std::size_t kLargeSlots = 4;
  // 2 GiB: a 1 GiB block and change per thread (the largest size alloc_bench measures); above it a block's
  // cost is the work done with it. Parked bytes never make the backend grow, so the bound is about
  // memory the arena cannot give back to the driver past its release threshold, not about the peak.
  static constexpr std::size_t kMaxLargeBytesPerThread = std::size_t{2} << 30;
  // A parking thread stops after this many large backend calls in a row that found the lock free: a
  // thread that hits its slots seldom calls the backend, and one whose sizes change misses often, so
  // a contended moment is forgotten within a few dozen of its misses.
  static constexpr std::uint32_t kCalmCallsToStopParking = 32;

  // When the large slots park blocks: the setting's own values (GPUSHIM_LARGE_SLOTS: auto, 1, 0). Over a
  // backend that cannot allocate_without_growing() they never do (the slab unmaps a large block at its
  // free).
  using LargeSlots = Settings::LargeSlots;
  explicit ThreadCacheAllocator(std::unique_ptr<Allocator> inner,
                                LargeSlots large_slots = LargeSlots::always) noexcept;
  ~ThreadCacheAllocator() override;

  const char* name() const noexcept override { return inner_->name(); }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  // Blocks handed back together, mostly other threads' (the fence queue's give-backs): the small ones
  // join the calling thread's cache as deallocate() would have them, and what it does not keep goes to
  // the backend in one batch, the large ones included. Those skip the caller's large slots: the slots
  // keep a thread's own frees for its next request of their exact size (its own large blocks reach a
  // give-back's backend part only past its returned list's room, or under memory pressure), and each
  // block parked there pushed the oldest out to the arena's lock, one call each.
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override;
  void* allocate_spilled(std::size_t bytes, StreamHandle stream) noexcept override {
    return inner_->allocate_spilled(bytes, stream);
  }
  // Empties every thread's cache and the depot into the backend, then the backend's own release.
  std::size_t release_cached() noexcept override;
  void release_idle() noexcept override { inner_->release_idle(); }
  // Counts every block the caches and the depot keep (classes and large slots) with `held_in_front`.
  bool release_due_with(std::uint64_t held_in_front) noexcept override;
  // Every cached block (all threads, both kinds, the depot) to the backend, then the backend's own.
  void hand_in_kept_blocks() noexcept override;
  AllocatorStats stats() const noexcept override;
  bool needs_free_fence() const noexcept override { return inner_->needs_free_fence(); }

  Allocator& inner() const noexcept { return *inner_; }
  // The class size a request is served with (the request itself above kMaxCachedBytes).
  static std::size_t class_bytes_for(std::size_t bytes) noexcept;
  // Blocks in every thread cache and the depot, for tests.
  std::size_t cached_blocks() const noexcept;
  // Of those, blocks in large slots (above kMaxCachedBytes), for tests.
  std::size_t cached_large_blocks() const noexcept;
  struct LargeSlot {
    void* p;
    std::size_t bytes;
  };

  struct ThreadCache;  // defined in the .cpp; public for the thread-exit hook there
  // Thread exit: the cache's blocks move to the depot and its counts to the shared ones. No backend call.
  void retire(ThreadCache* cache) noexcept;
  // In a forked child (only the forking thread exists): locks other parent threads held are reset.
  void reset_locks_after_fork() noexcept;

 private:
  ThreadCache* this_thread_cache() noexcept;
  ThreadCache* find_thread_cache() noexcept;
  ThreadCache* create_thread_cache() noexcept;
  std::size_t take_from_depot(std::size_t c, void** out, std::size_t count) noexcept;
  void* allocate_large(std::size_t bytes, StreamHandle stream) noexcept;
  void deallocate_large(void* p, std::size_t bytes, StreamHandle stream) noexcept;
  void* take_large_from_depot(std::size_t bytes) noexcept;
  void* allocate_from_backend(std::size_t bytes, StreamHandle stream) noexcept;
  // Whether this thread's freed large blocks are parked now (LargeSlots::while_contended: see above).
  bool parks_large(const ThreadCache* cache) const noexcept;
  // The backend's lock waits so far (0 where it counts none).
  std::uint64_t lock_waits() const noexcept {
    return lock_waits_ ? lock_waits_->load(std::memory_order_relaxed) : 0;
  }
  // After a large backend call of this thread: `waits_before` is lock_waits() before it.
  void note_large_backend_call(ThreadCache* cache, std::uint64_t waits_before) noexcept;
  // A large request of a thread that neither parks nor holds parked blocks or taken sizes: the backend.
  void* allocate_large_unparked(ThreadCache* cache, std::size_t bytes, StreamHandle stream) noexcept;
  // Every thread's large slots and the depot's large blocks to the backend; with `remember_taken`, each
  // thread's cache records the sizes taken from it. A miss passes the large_flushes_ it read before it
  // asked the backend: none is done if another flush ended since.
  static constexpr std::uint64_t kAnyFlushes = ~std::uint64_t{0};
  void flush_large_everywhere(bool remember_taken, std::uint64_t flushes_seen = kAnyFlushes) noexcept;
  void* allocate_taken_size(std::size_t bytes, StreamHandle stream) noexcept;
  // Every cached block (all threads, both kinds, the depot) to the backend; release_cached() without
  // the backend's own release.
  void give_back_every_cached_block() noexcept;
  // `owner`: the calling thread's own cache, whose count of flushed blocks it is (else flushed_).
  void give_to_backend(const LargeSlot* blocks, std::size_t count, ThreadCache* owner = nullptr) noexcept;
  // A freed block of a class (at most kMaxCachedBytes) into `cache`: true when kept; false when the
  // backend must take it (no cache, or the class or the thread full), at `*block`, its class size.
  // deallocate()'s and deallocate_batch()'s one rule.
  bool keep_small(ThreadCache* cache, void* p, std::size_t bytes, std::size_t* block) noexcept;

  std::unique_ptr<Allocator> inner_;
  // never where the backend cannot allocate_without_growing(): large blocks then pass through.
  const LargeSlots large_slots_;
  const std::atomic<std::uint64_t>* const lock_waits_;  // the backend's lock_wait_counter()
  const std::uint64_t id_;  // never reused, so a stale thread-local entry can never match
  std::uint32_t capacity_[kClassCount] = {};    // per class: blocks a thread may keep
  std::uint32_t first_slot_[kClassCount] = {};  // per class: its first slot in a cache's slot array
  std::size_t slot_count_ = 0;

  // The fields above are read on every call and written only by the constructor. What follows is
  // grouped by who writes it, a cache line each, so that no write of one group makes a miss of another:
  // beside caches_with_large_ and flushed_, which misses then wrote, the depot's counts that every miss
  // reads were a miss of every thread's (H200 wall-clock profile, docs/perf-notes.md, forty-seventh session).

  // Every live thread cache of this allocator (release_cached and stats walk them).
  alignas(64) mutable AdaptiveMutex caches_mutex_;
  std::vector<ThreadCache*> caches_;
  // Blocks of exited threads, per class; depot_blocks_ lets a miss skip the lock when it is empty.
  alignas(64) std::mutex depot_mutex_;
  std::vector<std::vector<void*>> depot_;
  std::vector<LargeSlot> depot_large_;  // exited threads' large slots (under depot_mutex_)
  // Read by every miss; written when a thread exits, when the depot serves and at flushes.
  alignas(64) std::atomic<std::size_t> depot_blocks_{0};
  std::atomic<std::uint64_t> depot_bytes_{0};
  std::atomic<std::size_t> depot_large_blocks_{0};
  std::atomic<std::uint64_t> large_flushes_{0};  // walks of flush_large_everywhere ended (under caches_mutex_)
  // Thread caches whose large slots may hold blocks (a cache stays counted after a hit or its owner's
  // miss empties its slots, until a flush walk or its exit: so a thread's pairs, hits or misses, write
  // no shared line). A large miss reads it to know whether blocks parked elsewhere might spare the
  // backend a growth.
  alignas(64) std::atomic<std::size_t> caches_with_large_{0};
  // Counts for stats(), written off the hits' path.
  alignas(64) std::atomic<std::uint64_t> recovered_failures_{0};  // backend failures a retry after a flush served
  // Counts of exited threads (a thread's own live in its cache).
  std::atomic<std::uint64_t> retired_allocate_hits_{0};
  std::atomic<std::uint64_t> retired_deallocate_hits_{0};
  std::atomic<std::uint64_t> depot_hits_{0};          // misses served from the depot
  std::atomic<std::uint64_t> flushed_{0};  // cached blocks given to the backend (but a cache's own): not frees
  std::atomic<std::uint64_t> untracked_rounding_{0};  // exited threads' and cache-less calls' rounding
};

}  // namespace gpushim
