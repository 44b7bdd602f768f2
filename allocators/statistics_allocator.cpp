#include "allocators/statistics_allocator.h"

namespace gpushim {

void* StatisticsAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  void* p = inner_->allocate(bytes, stream);
  if (!p) {
    failed_.value.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  allocations_.value.fetch_add(1, std::memory_order_relaxed);
  bytes_allocated_total_.value.fetch_add(bytes, std::memory_order_relaxed);
  std::uint64_t in_use = bytes_in_use_.value.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  std::uint64_t peak = peak_bytes_in_use_.value.load(std::memory_order_relaxed);
  while (in_use > peak &&
         !peak_bytes_in_use_.value.compare_exchange_weak(peak, in_use, std::memory_order_relaxed)) {
  }
  return p;
}

void StatisticsAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  inner_->deallocate(p, bytes, stream);
  deallocations_.value.fetch_add(1, std::memory_order_relaxed);
  bytes_in_use_.value.fetch_sub(bytes, std::memory_order_relaxed);
}

AllocatorStats StatisticsAllocator::stats() const noexcept {
  AllocatorStats s = inner_->stats();  // memory fields
  s.allocations = allocations_.value.load(std::memory_order_relaxed);
  s.deallocations = deallocations_.value.load(std::memory_order_relaxed);
  s.failed_allocations = failed_.value.load(std::memory_order_relaxed);
  s.bytes_in_use = bytes_in_use_.value.load(std::memory_order_relaxed);
  s.peak_bytes_in_use = peak_bytes_in_use_.value.load(std::memory_order_relaxed);
  return s;
}

}  // namespace gpushim
