#include "allocators/tiered_allocator.h"

#include <algorithm>

#include "allocators/growth_policy.h"
#include "allocators/slab_allocator.h"
#include "allocators/vmm_arena.h"

namespace gpushim {

TieredAllocator::TieredAllocator(std::unique_ptr<Allocator> small, std::unique_ptr<Allocator> large,
                                 std::size_t split_bytes) noexcept
    : small_(std::move(small)), large_(std::move(large)), split_bytes_(split_bytes) {}

void* TieredAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  if (bytes <= split_bytes_) return small_->allocate(bytes, stream);
  if (new_peak_refused()) return large_->allocate(bytes, stream);  // the caller waits, then asks again
  {
    NoNewPeakScope no_new_peak;
    if (void* p = large_->allocate(bytes, stream)) return p;
  }
  // The large tier must grow past its peak: the small tier's empty slabs (kept mapped to spare map and
  // unmap calls) go back to the driver first, so the process's peak does not hold both.
  small_->release_cached();
  return large_->allocate(bytes, stream);
}

void* TieredAllocator::allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept {
  return bytes <= split_bytes_ ? small_->allocate(bytes, stream) : large_->allocate_without_growing(bytes, stream);
}

void TieredAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  if (bytes <= split_bytes_)
    small_->deallocate(p, bytes, stream);
  else
    large_->deallocate(p, bytes, stream);
}

std::size_t TieredAllocator::release_cached() noexcept {
  return small_->release_cached() + large_->release_cached();
}

AllocatorStats TieredAllocator::stats() const noexcept {
  const AllocatorStats a = small_->stats();
  const AllocatorStats b = large_->stats();
  AllocatorStats s;
  s.allocations = a.allocations + b.allocations;
  s.deallocations = a.deallocations + b.deallocations;
  s.failed_allocations = a.failed_allocations + b.failed_allocations;
  s.bytes_in_use = a.bytes_in_use + b.bytes_in_use;
  s.peak_bytes_in_use = a.peak_bytes_in_use + b.peak_bytes_in_use;
  s.bytes_reserved = a.bytes_reserved + b.bytes_reserved;
  s.peak_bytes_reserved = a.peak_bytes_reserved + b.peak_bytes_reserved;
  s.bytes_cached = a.bytes_cached + b.bytes_cached;
  // Each tier only serves its own sizes, so the largest block any request could get without growing
  // is the large tier's, unless it has none.
  s.largest_free_block = std::max(a.largest_free_block, b.largest_free_block);
  s.internal_waste = a.internal_waste + b.internal_waste;
  return s;
}

std::unique_ptr<Allocator> make_tiered_allocator(MemoryProvider& provider, const Settings& settings) {
  const std::size_t slab_max =
      settings.slab_max_size != 0 ? static_cast<std::size_t>(settings.slab_max_size) : kDefaultSlabMaxSize;
  const std::size_t split =
      std::min<std::size_t>(settings.tiered_split != 0 ? settings.tiered_split : kDefaultTieredSplit, kSlabMaxSizeLimit);
  auto small = std::make_unique<SlabAllocator>(provider, std::max(slab_max, split), /*thread_caches=*/true,
                                               kDefaultSlabIdleBytes);
  auto large = make_vmm_arena(provider, settings);
  return std::make_unique<TieredAllocator>(std::move(small), std::move(large), split);
}

}  // namespace gpushim
