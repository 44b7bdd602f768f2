// The default backend: small blocks to a SlabAllocator, the rest to a VmmArena, over one provider.
//
// Why split: a training step allocates thousands of small tensors (norms, biases, scalars) and a few
// hundred large ones. The slab serves small sizes from per-thread magazines without a lock and without
// searching; the arena serves large sizes with best fit to within 1/32, where the slab's size classes
// would round away up to 25%. The split defaults to 64 KiB (kDefaultTieredSplit, below).
//
// A block is routed back by its size: the router hands deallocate() the size allocate() was given, so
// no lookup is needed to know which tier owns a pointer.
#pragma once

#include <cstddef>
#include <memory>

#include "allocators/allocator.h"
#include "config/settings.h"
#include "providers/memory_provider.h"

namespace gpushim {

class TieredAllocator final : public Allocator {
 public:
  // Sizes <= `split_bytes` go to `small`, the rest to `large`. Both must outlive nothing but this.
  TieredAllocator(std::unique_ptr<Allocator> small, std::unique_ptr<Allocator> large,
                  std::size_t split_bytes) noexcept;

  const char* name() const noexcept override { return "tiered"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  // Small sizes: the slab's own memory, which blocks given back to the arena cannot serve, so it
  // allocates as usual; large sizes: the arena's answer.
  void* allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept override;
  bool can_allocate_without_growing() const noexcept override { return large_->can_allocate_without_growing(); }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override;
  // Sums of both tiers. The peaks are sums of each tier's peak, so an upper bound of the true peak.
  AllocatorStats stats() const noexcept override;

  std::size_t split_bytes() const noexcept { return split_bytes_; }
  Allocator& small_tier() noexcept { return *small_; }
  Allocator& large_tier() noexcept { return *large_; }

 private:
  std::unique_ptr<Allocator> small_;
  std::unique_ptr<Allocator> large_;
  const std::size_t split_bytes_;
};

// The default split: the slab's largest class that has a thread magazine (allocators/slab_allocator.cpp:
// a magazine holds 256 KiB, at least 4 blocks). Above it a slab class is a locked depot like the arena,
// so it brings no speed, while it rounds a block up by as much as 25% and keeps its slabs apart from the
// arena's cached memory. On an LLM decoding loop whose KV cache grows every token (docs/perf-notes.md,
// "Fit on a growing KV cache") a 1 MiB split reserved 1.08-1.16x the peak live over four draws of
// requests, 64 KiB 1.07-1.09x.
inline constexpr std::size_t kDefaultTieredSplit = std::size_t{64} << 10;

// GPUSHIM_TIERED_SPLIT (0 = kDefaultTieredSplit). The slab is built to serve at least the split, so no
// small request falls to its dedicated-run path.
std::unique_ptr<Allocator> make_tiered_allocator(MemoryProvider& provider, const Settings& settings);

}  // namespace gpushim
