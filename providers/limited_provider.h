// A MemoryProvider decorator that refuses map() past a byte cap: how GPUSHIM_LIMIT bounds the physical
// footprint of the provider-backed backends (vmm, buddy, slab, tiered) without each of them knowing
// about the cap (RMM's limiting_resource_adaptor, one layer down). A refused map() looks like
// out-of-memory to the backend, which returns nullptr, and the router turns that into
// CUDA_ERROR_OUT_OF_MEMORY after its release-and-retry.
#pragma once

#include <atomic>
#include <cstddef>

#include "providers/memory_provider.h"

namespace gpushim {

class LimitedProvider final : public ForwardingProvider {
 public:
  // `inner` must outlive this provider. `cap` is in bytes (GPUSHIM_LIMIT, already resolved).
  LimitedProvider(MemoryProvider& inner, std::size_t cap) noexcept : ForwardingProvider(inner), cap_(cap) {}

  bool map(void* addr, std::size_t bytes) noexcept override;
  void unmap(void* addr, std::size_t bytes) noexcept override;

  // Bytes mapped through this provider (what counts against the cap).
  std::size_t bytes_mapped() const noexcept override {
    return mapped_.load(std::memory_order_relaxed);
  }
  std::size_t cap() const noexcept { return cap_; }

 private:
  const std::size_t cap_;
  std::atomic<std::size_t> mapped_{0};
};

}  // namespace gpushim
