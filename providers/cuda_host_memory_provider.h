// MemoryProvider over the CUDA VMM API whose physical memory lives in host RAM (a host NUMA node) and is
// mapped for the device: the memory of spilled blocks (GPUSHIM_SPILL=host, docs/host-spill.md).
//
// The driver steps are providers/cuda_physical_memory.h, as for device memory; only the location
// differs: cuMemCreate with CU_MEM_LOCATION_TYPE_HOST_NUMA and the node closest to the device
// (CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID), then cuMemMap and one cuMemSetAccess read-write for the devices
// that use the device's blocks. Kernels reach it at an ordinary device address over the host link,
// without page faults (measured on the H100: ~51 GB/s read and write, against ~3 TB/s for device
// memory; cuMemCreate pins it at ~0.25 s per GiB, test_apps/host_memory_probe.cu).
//
// To the program a spilled block is device memory, which it got from cudaMalloc
// (shim/pointer_query_hooks.cpp reports it as such); the CPU is given access all the same, so code that
// asks the driver, hears "host" and reads it from the CPU gets the right bytes rather than a fault.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <vector>

#include <cuda.h>

#include "providers/cuda_physical_memory.h"
#include "providers/mapping_table.h"
#include "providers/memory_provider.h"
#include "tracing/trace_recorder.h"

namespace gpushim {

class CudaHostMemoryProvider final : public MemoryProvider {
 public:
  // `device`: the device whose blocks spill (its context current). `access`: every device that must
  // reach the memory (the device itself, and its peers under GPUSHIM_PEERS). `ok()` is false when the
  // driver cannot map host memory for the device (no HOST_NUMA VMM support); it says why once.
  CudaHostMemoryProvider(int device, const std::vector<int>& access,
                         tracing::BackendId backend = tracing::BackendId::unknown) noexcept;
  ~CudaHostMemoryProvider() override = default;  // never frees: device state lives until the process ends
  CudaHostMemoryProvider(const CudaHostMemoryProvider&) = delete;
  CudaHostMemoryProvider& operator=(const CudaHostMemoryProvider&) = delete;

  bool ok() const noexcept { return ok_; }
  int host_numa_node() const noexcept { return prop_.location.id; }

  std::size_t granularity() const noexcept override { return granularity_; }
  void* reserve(std::size_t bytes) noexcept override;
  void release_reservation(void* base, std::size_t bytes) noexcept override;
  bool map(void* addr, std::size_t bytes) noexcept override;
  void unmap(void* addr, std::size_t bytes) noexcept override;
  std::size_t bytes_mapped() const noexcept override { return bytes_mapped_.load(std::memory_order_relaxed); }

 private:
  const int device_;
  const tracing::BackendId backend_;
  CUcontext context_ = nullptr;  // the device's context, current when the provider was built
  bool ok_ = false;
  std::size_t granularity_ = kFallbackVmmGranularity;
  CUmemAllocationProp prop_{};
  std::vector<CUmemAccessDesc> access_;
  std::atomic<std::size_t> bytes_mapped_{0};
  std::mutex mutex_;  // map/unmap are the cold path (pinning: ~0.25 s per GiB)
  struct Mapping {
    CUmemGenericAllocationHandle handle;
    std::size_t bytes;
  };
  MappingTable<Mapping> mappings_;
};

}  // namespace gpushim
