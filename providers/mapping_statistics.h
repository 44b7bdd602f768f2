// GPUSHIM_STATS: what a device's backend asked of the driver's physical memory. A MemoryProvider
// decorator, put over the device's provider only when the statistics are on, that counts map() and
// unmap() calls, their bytes and the wall time they took (a map or an unmap of device memory is a
// cuMemCreate/cuMemMap/cuMemSetAccess or cuMemUnmap/cuMemRelease: 15 us to milliseconds each).
//
// Why: GPUSHIM_STATS counted allocations let past the peak, but not whether they grew; 16 threads at
// 16 MiB were let past 1,276 times in a process whose peak was 5.6 GiB (H200, twenty-fifth session).
// The maps say what grew, and the time in them says whether a slow stretch of a program was the driver.
//
// The thread-local count of maps lets the router tell, for one allocation, whether it mapped memory:
// read before and after, on the same thread, other threads' maps do not blur it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "diagnostics/hot_tls.h"
#include "providers/memory_provider.h"

namespace gpushim {

struct MappingTotals {
  std::uint64_t maps = 0;
  std::uint64_t map_bytes = 0;
  std::uint64_t map_ns = 0;
  std::uint64_t refused_maps = 0;  // map() answered false: out of memory, or a GPUSHIM_LIMIT cap
  std::uint64_t unmaps = 0;
  std::uint64_t unmap_bytes = 0;
  std::uint64_t unmap_ns = 0;
};

// The successful map() calls the calling thread made through any MappingStatisticsProvider.
inline GPUSHIM_HOT_TLS std::uint64_t t_maps_by_this_thread = 0;

class MappingStatisticsProvider final : public ForwardingProvider {
 public:
  using ForwardingProvider::ForwardingProvider;

  bool map(void* addr, std::size_t bytes) noexcept override;
  void unmap(void* addr, std::size_t bytes) noexcept override;

  MappingTotals totals() const noexcept;

 private:
  std::atomic<std::uint64_t> maps_{0}, map_bytes_{0}, map_ns_{0}, refused_maps_{0};
  std::atomic<std::uint64_t> unmaps_{0}, unmap_bytes_{0}, unmap_ns_{0};
};

}  // namespace gpushim
