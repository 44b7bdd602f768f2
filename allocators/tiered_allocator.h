// The default backend: small blocks to a SlabAllocator, the rest to a VmmArena, over one provider.
//
// Why split: a training step allocates thousands of small tensors (norms, biases, scalars) and a few
// hundred large ones. The slab serves small sizes from per-thread magazines without a lock and without
// searching; the arena serves large sizes with best fit to within 1/32, where the slab's size classes
// would round away up to 25%. The split defaults to 64 KiB (kDefaultTieredSplit, below).
//
// A block is routed back by its size: the router hands deallocate() the size allocate() was given, so
// no lookup is needed to know which tier owns a pointer.
//
// make_tiered_allocator's slab takes its slabs from the arena (allocators/block_memory_provider.h), so
// both tiers share one pool of mapped memory and the arena's peak is the process's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "allocators/allocator.h"
#include "allocators/block_memory_provider.h"
#include "allocators/slab_allocator.h"
#include "config/settings.h"
#include "providers/memory_provider.h"

namespace gpushim {

class TieredAllocator final : public Allocator {
 public:
  // Sizes <= `split_bytes` go to `small`, the rest to `large`. Both must outlive nothing but this.
  TieredAllocator(std::unique_ptr<Allocator> small, std::unique_ptr<Allocator> large,
                  std::size_t split_bytes) noexcept;
  // `small` takes its memory from `large` through `small_memory`: destroyed in that order (small first,
  // so its slabs go back to the arena while it exists), and the stats count the slabs once.
  TieredAllocator(std::unique_ptr<Allocator> large, std::unique_ptr<BlockMemoryProvider> small_memory,
                  std::unique_ptr<SlabAllocator> small, std::size_t split_bytes) noexcept;
  ~TieredAllocator() override;

  const char* name() const noexcept override { return "tiered"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  // Small sizes: the slab allocates as usual (a new slab is a small block, of the arena where it is
  // arena-backed); large sizes: the arena's answer.
  void* allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept override;
  bool can_allocate_without_growing() const noexcept override { return large_->can_allocate_without_growing(); }
  const std::atomic<std::uint64_t>* lock_wait_counter() const noexcept override {
    return large_->lock_wait_counter();
  }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  // The small blocks one by one to the slab, the large ones in one batch to the arena.
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override;
  std::size_t release_cached() noexcept override;
  // The arena's delay; the slabs give their empty slabs back by their own rule (slab_allocator.h).
  void release_idle() noexcept override { large_->release_idle(); }
  // Arena-backed slabs: their empty slabs (up to kTieredSlabIdleBytes, kept for the next batch of small
  // blocks) and the threads' magazines are free memory in blocks of the arena, which counts them as in
  // use, so they count as kept in front of it. The hand-in empties every thread's magazines and gives the
  // empty slabs to the arena.
  bool release_due_with(std::uint64_t held_in_front) noexcept override;
  void hand_in_kept_blocks() noexcept override;
  // Both tiers together. Over separate memory the peaks are sums of each tier's peak (an upper bound of
  // the true peak); over arena-backed slabs the arena's peak reserved is the true one.
  AllocatorStats stats() const noexcept override;

  std::size_t split_bytes() const noexcept { return split_bytes_; }
  Allocator& small_tier() noexcept { return *small_; }
  Allocator& large_tier() noexcept { return *large_; }
  const BlockMemoryProvider* small_memory() const noexcept { return small_memory_.get(); }  // null: own memory

 private:
  // Declared so that destruction runs small_, small_memory_, large_.
  std::unique_ptr<Allocator> large_;
  std::unique_ptr<BlockMemoryProvider> small_memory_;  // null when the tiers have memory of their own
  std::unique_ptr<Allocator> small_;
  SlabAllocator* arena_slabs_ = nullptr;  // small_, where its slabs are blocks of large_
  const std::size_t split_bytes_;
};

// The default split: the slab's largest class that has a thread magazine (allocators/slab_allocator.cpp:
// a magazine holds 256 KiB, at least 4 blocks). Above it a slab class is a locked depot like the arena,
// so it brings no speed, while it rounds a block up by as much as 25% and keeps its slabs apart from the
// arena's cached memory. On an LLM decoding loop whose KV cache grows every token (docs/perf-notes.md,
// "Fit on a growing KV cache") a 1 MiB split reserved 1.08-1.16x the peak live over four draws of
// requests, 64 KiB 1.07-1.09x.
inline constexpr std::size_t kDefaultTieredSplit = std::size_t{64} << 10;

// Tiered's slabs, blocks of its arena: 64 KiB, or 16 blocks of the class where that is more (256 KiB
// at 16 KiB, 1 MiB at 64 KiB; at most 2 MiB for that rule, for splits above the default). Host replays of traces recorded on the H200 (LLM decoding, a CNN, a
// transformer; docs/perf-notes.md, "Slabs carved from the arena"): 64-128 KiB fit best on each, against
// up to 2 MiB; 16 blocks keep a fenced batch of 64 KiB frees from emptying and refilling a slab every
// other block (tiered fenced 64 KiB: 2,732 instructions per pair at 2 blocks per slab, 931 at 16).
inline constexpr std::size_t kTieredSlabBytes = std::size_t{64} << 10;
inline constexpr std::uint32_t kTieredSlabMinBlocks = 16;
// Empty slabs kept beyond one per class: a fenced batch (up to 256 blocks of a class, 16 MiB at 64 KiB)
// empties slabs that the next requests take again. They are blocks of the arena: tiered gives them back
// before its arena grows past its peak (TieredAllocator::allocate), so they never raise it.
inline constexpr std::size_t kTieredSlabIdleBytes = std::size_t{16} << 20;

// GPUSHIM_TIERED_SPLIT (0 = kDefaultTieredSplit). The slab is built to serve at least the split, so no
// small request falls to its dedicated-run path; its slabs are blocks of the arena (kTieredSlabBytes).
std::unique_ptr<Allocator> make_tiered_allocator(MemoryProvider& provider, const Settings& settings);

}  // namespace gpushim
