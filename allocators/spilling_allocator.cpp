#include "allocators/spilling_allocator.h"

namespace gpushim {

void* SpillingAllocator::allocate_spilled(std::size_t bytes, StreamHandle stream) noexcept {
  if (void* p = host_->allocate(bytes, stream)) return p;
  // The spill cap is in the way: idle host memory may be in pieces too small for this block.
  if (host_->release_cached() == 0) return nullptr;
  return host_->allocate(bytes, stream);
}

void SpillingAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  if (host_->contains(p)) {
    host_->deallocate(p, bytes, stream);
    return;
  }
  device_->deallocate(p, bytes, stream);
}

AllocatorStats SpillingAllocator::stats() const noexcept {
  AllocatorStats s = device_->stats();
  const AllocatorStats h = host_->stats();
  s.allocations += h.allocations;
  s.deallocations += h.deallocations;
  s.bytes_in_use += h.bytes_in_use;
  // An upper bound: the two peaks need not have happened at once (StatisticsAllocator, which wraps
  // this one, keeps the exact peak).
  s.peak_bytes_in_use += h.peak_bytes_in_use;
  s.internal_waste += h.internal_waste;
  s.spilled_allocations = h.allocations;
  s.bytes_spilled = h.bytes_in_use;
  s.peak_bytes_spilled = h.peak_bytes_in_use;
  s.spill_reserved = h.bytes_reserved;
  s.peak_spill_reserved = h.peak_bytes_reserved;
  return s;
}

}  // namespace gpushim
