// A decorator that fails allocations once the bytes in use would pass a cap (RMM's
// limiting_resource_adaptor). It caps the backends that take memory straight from the driver
// (passthrough, mempool), which no LimitedProvider sits under; provider-backed backends are capped on
// their physical footprint by LimitedProvider instead. Bytes count as the block the caller gets:
// the request rounded up to kMinAlignment, as the driver rounds it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "allocators/allocator.h"

namespace gpushim {

class LimitingAllocator final : public Allocator {
 public:
  LimitingAllocator(std::unique_ptr<Allocator> inner, std::size_t cap) noexcept
      : inner_(std::move(inner)), cap_(cap) {}

  const char* name() const noexcept override { return inner_->name(); }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override { return inner_->release_cached(); }
  void release_idle() noexcept override { inner_->release_idle(); }
  bool release_due_with(std::uint64_t held_in_front) noexcept override {
    return inner_->release_due_with(held_in_front);
  }
  void hand_in_kept_blocks() noexcept override { inner_->hand_in_kept_blocks(); }
  AllocatorStats stats() const noexcept override;  // the inner's, plus refusals as failures
  bool needs_free_fence() const noexcept override { return inner_->needs_free_fence(); }

  std::size_t cap() const noexcept { return cap_; }
  std::size_t bytes_in_use() const noexcept { return in_use_.load(std::memory_order_relaxed); }

 private:
  static std::size_t charged(std::size_t bytes) noexcept {
    return (bytes + kMinAlignment - 1) / kMinAlignment * kMinAlignment;
  }
  std::unique_ptr<Allocator> inner_;
  const std::size_t cap_;
  std::atomic<std::size_t> in_use_{0};
  std::atomic<std::uint64_t> refused_{0};
};

}  // namespace gpushim
