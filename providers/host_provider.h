// MemoryProvider over host memory (mmap), so the algorithms in allocators/ run on the CPU exactly as they
// run on the GPU: CPU tests, benchmarks and `gpushim trace replay` use it.
//
// It mimics the CUDA VMM rules the algorithms must obey on the GPU, and counts every breach instead of
// tolerating it: sizes and addresses are multiples of the granularity (2 MiB by default, like the H100),
// map() only inside a reservation and never over a mapped range, and unmap() only of a range exactly as
// one map() call mapped it (cuMemUnmap cannot split a mapping). A test that checks misuse_count() == 0
// therefore proves the algorithm would not trip the driver.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

#include "providers/memory_provider.h"

namespace gpushim {

class HostProvider final : public MemoryProvider {
 public:
  static constexpr std::size_t kDefaultGranularity = std::size_t{2} << 20;  // the H100's VMM granularity
  static constexpr std::size_t kUnlimited = ~std::size_t{0};

  // `granularity` is rounded up to a power of two of at least the page size. `physical_cap` bounds the
  // bytes mapped at once, so tests can provoke out-of-memory.
  explicit HostProvider(std::size_t granularity = kDefaultGranularity,
                        std::size_t physical_cap = kUnlimited) noexcept;
  ~HostProvider() override;  // gives back whatever is still reserved
  HostProvider(const HostProvider&) = delete;
  HostProvider& operator=(const HostProvider&) = delete;

  std::size_t granularity() const noexcept override { return granularity_; }
  void* reserve(std::size_t bytes) noexcept override;
  void release_reservation(void* base, std::size_t bytes) noexcept override;
  bool map(void* addr, std::size_t bytes) noexcept override;
  void unmap(void* addr, std::size_t bytes) noexcept override;
  std::size_t bytes_mapped() const noexcept override {
    return bytes_mapped_.load(std::memory_order_relaxed);
  }

  std::size_t physical_cap() const noexcept { return physical_cap_; }
  std::size_t map_calls() const noexcept { return map_calls_.load(std::memory_order_relaxed); }
  std::size_t unmap_calls() const noexcept { return unmap_calls_.load(std::memory_order_relaxed); }
  // Calls that broke the VMM rules above (the GPU driver would have failed them).
  std::size_t misuse_count() const noexcept { return misuse_.load(std::memory_order_relaxed); }
  // Calls that failed because the host said no (mmap or mprotect failed, its own bookkeeping could not
  // allocate): not the algorithm's out-of-memory but this machine's, e.g. under `ulimit -v`.
  std::size_t host_failures() const noexcept { return host_failures_.load(std::memory_order_relaxed); }

 private:
  bool aligned(std::uintptr_t value) const noexcept { return (value & (granularity_ - 1)) == 0; }
  bool inside_reservation(std::uintptr_t addr, std::size_t bytes) const;  // mutex_ held
  bool overlaps_mapping(std::uintptr_t addr, std::size_t bytes) const;    // mutex_ held

  const std::size_t granularity_;
  const std::size_t physical_cap_;
  std::atomic<std::size_t> bytes_mapped_{0};
  std::atomic<std::size_t> map_calls_{0};
  std::atomic<std::size_t> unmap_calls_{0};
  std::atomic<std::size_t> misuse_{0};
  std::atomic<std::size_t> host_failures_{0};
  // map/unmap are the cold path (they are driver calls of 15-50 us on the GPU), so one mutex is fine.
  mutable std::mutex mutex_;
  std::map<std::uintptr_t, std::size_t> reservations_;  // base -> bytes
  std::map<std::uintptr_t, std::size_t> mappings_;      // addr -> bytes, one entry per map() call
};

}  // namespace gpushim
