// MemoryProvider over the CUDA virtual memory management API, for one device.
//
// reserve = cuMemAddressReserve; map = cuMemCreate + cuMemMap + one cuMemSetAccess for the whole range
// (cuMemSetAccess costs 30-54 us whatever the size, so once per mapped range, never per block);
// unmap = wait for the device, cuMemUnmap + cuMemRelease of exactly what one map() mapped. The driver
// steps are providers/cuda_physical_memory.h, shared with CudaPeerProvider; what is this provider's own
// is the shareable handle, the IPC registration and the compute-sanitizer heaps.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>

#include <cuda.h>

#include "ipc/exportable_memory.h"
#include "providers/cuda_physical_memory.h"
#include "providers/mapping_table.h"
#include "providers/memory_provider.h"
#include "tracing/trace_recorder.h"

namespace gpushim {

// Also an ipc::ExportableMemory: physical memory is created shareable as a POSIX file descriptor, so a
// gpushim block can be passed to another process (cuIpcGetMemHandle, docs/ecosystem.md).
class CudaVmmProvider final : public MemoryProvider, public ipc::ExportableMemory {
 public:
  // Asks the driver for the granularity of pinned device memory on `device`; `ok()` is false when the
  // driver has no VMM support there (then every map() fails and the router falls back).
  explicit CudaVmmProvider(int device, tracing::BackendId backend = tracing::BackendId::unknown) noexcept;
  ~CudaVmmProvider() override = default;  // never frees: device state lives until the process ends
  CudaVmmProvider(const CudaVmmProvider&) = delete;
  CudaVmmProvider& operator=(const CudaVmmProvider&) = delete;

  bool ok() const noexcept { return ok_; }
  std::size_t granularity() const noexcept override { return granularity_; }
  void* reserve(std::size_t bytes) noexcept override;
  void release_reservation(void* base, std::size_t bytes) noexcept override;
  bool map(void* addr, std::size_t bytes) noexcept override;
  void unmap(void* addr, std::size_t bytes) noexcept override;
  std::size_t bytes_mapped() const noexcept override { return bytes_mapped_.load(std::memory_order_relaxed); }

  void reset_after_fork() noexcept;

  bool physical_handle_for(CUdeviceptr p, CUmemGenericAllocationHandle* handle, CUdeviceptr* chunk_base,
                           std::size_t* chunk_size) noexcept override;

 private:
  const int device_;
  const tracing::BackendId backend_;
  CUcontext context_ = nullptr;  // the device's context, current when the provider was built
  bool ok_ = false;
  std::size_t granularity_ = kFallbackVmmGranularity;
  CUmemAllocationProp prop_{};
  CUmemAccessDesc access_{};
  std::atomic<std::size_t> bytes_mapped_{0};
  std::mutex mutex_;  // map/unmap are 15-300 us driver calls; one lock is no bottleneck
  struct Mapping {
    CUmemGenericAllocationHandle handle;
    std::size_t bytes;
  };
  MappingTable<Mapping> mappings_;
};

}  // namespace gpushim
