// The default backend: small blocks to a SlabAllocator, the rest to a VmmArena, over one provider.
//
// Why split: a training step allocates thousands of small tensors (norms, biases, scalars) and a few
// hundred large ones. The slab serves small sizes from per-thread magazines without a lock and without
// searching; the arena serves large sizes with best fit to within 1/32, where the slab's size classes
// would round away up to 25%. The split defaults to the slab's largest class (1 MiB).
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

// GPUSHIM_TIERED_SPLIT (0 = the slab's largest size, GPUSHIM_SLAB_MAX_SIZE or 1 MiB). The slab is built
// to serve at least the split, so no small request falls to its dedicated-run path.
std::unique_ptr<Allocator> make_tiered_allocator(MemoryProvider& provider, const Settings& settings);

}  // namespace gpushim
