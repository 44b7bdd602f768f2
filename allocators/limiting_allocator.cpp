#include "allocators/limiting_allocator.h"

namespace gpushim {

void* LimitingAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  std::size_t charge = charged(bytes);
  if (charge < bytes) {  // overflow: no cap can hold it
    refused_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  // Claim before allocating, so racing threads cannot pass the cap together.
  std::size_t in_use = in_use_.load(std::memory_order_relaxed);
  do {
    if (charge > cap_ || in_use > cap_ - charge) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      return nullptr;
    }
  } while (!in_use_.compare_exchange_weak(in_use, in_use + charge, std::memory_order_relaxed));
  void* p = inner_->allocate(bytes, stream);
  if (!p) in_use_.fetch_sub(charge, std::memory_order_relaxed);
  return p;
}

void LimitingAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  inner_->deallocate(p, bytes, stream);
  in_use_.fetch_sub(charged(bytes), std::memory_order_relaxed);
}

AllocatorStats LimitingAllocator::stats() const noexcept {
  AllocatorStats s = inner_->stats();
  s.failed_allocations += refused_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace gpushim
