// The real driver, unchanged: cuMemAlloc or cuMemAllocAsync / cuMemFree. For comparison, and the safe fallback when a
// backend cannot be built. cuMemFree synchronizes with the GPU itself, so the router need not fence
// this backend's frees (needs_free_fence() is false).
#pragma once

#include <atomic>

#include "allocators/allocator.h"

namespace gpushim {

class PassthroughAllocator final : public Allocator {
 public:
  explicit PassthroughAllocator(int device) noexcept : device_(device) {}

  const char* name() const noexcept override { return "passthrough"; }
  // cuMemAlloc in the caller's current context (the router calls with the device's context current), or
  // cuMemAllocAsync on `stream` when there is one.
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override { return 0; }  // the driver caches nothing for us
  AllocatorStats stats() const noexcept override;
  bool needs_free_fence() const noexcept override { return false; }

 private:
  const int device_;
  std::atomic<std::uint64_t> in_use_{0};
  std::atomic<std::uint64_t> peak_{0};
};

}  // namespace gpushim
