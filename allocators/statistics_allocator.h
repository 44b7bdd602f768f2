// A decorator that counts what passes through a backend (RMM's statistics_resource_adaptor): calls,
// failures, bytes in use and their peak, and the total bytes ever handed out (the GPUSHIM_STATS table's
// "bytes_allocated"). Memory fields (reserved, cached, largest free block, waste) come from the inner
// backend, which is the only one that knows them.
//
// Counters are relaxed atomics, each on its own cache line: no lock, and threads allocating at once
// touch shared lines only with single atomic adds (the peak is a CAS loop that stops as soon as the
// current peak is higher, which it almost always is).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "allocators/allocator.h"

namespace gpushim {

class StatisticsAllocator final : public Allocator {
 public:
  explicit StatisticsAllocator(std::unique_ptr<Allocator> inner) noexcept : inner_(std::move(inner)) {}

  const char* name() const noexcept override { return inner_->name(); }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override { return inner_->release_cached(); }
  AllocatorStats stats() const noexcept override;
  bool needs_free_fence() const noexcept override { return inner_->needs_free_fence(); }

  std::uint64_t bytes_allocated_total() const noexcept {
    return bytes_allocated_total_.value.load(std::memory_order_relaxed);
  }
  Allocator& inner() const noexcept { return *inner_; }

 private:
  struct alignas(64) Counter {
    std::atomic<std::uint64_t> value{0};
  };
  std::unique_ptr<Allocator> inner_;
  Counter allocations_, deallocations_, failed_, bytes_in_use_, peak_bytes_in_use_,
      bytes_allocated_total_;
};

}  // namespace gpushim
