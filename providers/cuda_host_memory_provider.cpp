#include "providers/cuda_host_memory_provider.h"

#include "diagnostics/log.h"
#include "driver/real_driver.h"

namespace gpushim {
namespace {

// Pinned memory on the host NUMA node closest to `device` (node 0 where the system reports none,
// CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID = -1: one node). Measured on the H100 host: HOST_NUMA with that node
// works; HOST_NUMA_CURRENT is refused by cuMemCreate (CUDA_ERROR_INVALID_VALUE).
CUmemAllocationProp pinned_host_memory_near(CUdevice device) noexcept {
  int node = 0;
  if (real_driver().cuDeviceGetAttribute(&node, CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, device) != CUDA_SUCCESS ||
      node < 0)
    node = 0;
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
  prop.location.id = node;
  return prop;
}

// Read and write access from the CPU, for memory on host NUMA node `node`.
CUmemAccessDesc cpu_access_to(int node) noexcept {
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
  access.location.id = node;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return access;
}

}  // namespace

CudaHostMemoryProvider::CudaHostMemoryProvider(int device, const std::vector<int>& access,
                                               tracing::BackendId backend) noexcept
    : device_(device), backend_(backend) {
  const RealDriver& driver = real_driver();
  if (!driver.loaded || !driver.cuMemGetAllocationGranularity || !driver.cuDeviceGetAttribute) return;
  CUdevice dev = 0;
  int supported = 0;
  if (driver.cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
      driver.cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                  dev) != CUDA_SUCCESS ||
      !supported) {
    log(LogLevel::warn, "GPUSHIM_SPILL=host: device %d cannot map host memory (no HOST_NUMA virtual memory "
        "management); it does not spill", device);
    return;
  }
  prop_ = pinned_host_memory_near(dev);
  std::size_t granularity = 0;
  const CUresult rc = minimum_granularity(prop_, &granularity);
  if (rc != CUDA_SUCCESS || granularity == 0) {
    log(LogLevel::warn, "GPUSHIM_SPILL=host: device %d: no granularity for host memory (%d); it does not spill",
        device, static_cast<int>(rc));
    return;
  }
  try {
    for (int d : access) access_.push_back(read_write_access_from(d));
  } catch (...) {
    return;
  }
  if (access_.empty()) return;
  driver.cuCtxGetCurrent(&context_);
  granularity_ = granularity;
  ok_ = true;
}

void* CudaHostMemoryProvider::reserve(std::size_t bytes) noexcept {
  if (!ok_) return nullptr;
  return reserve_address_space(device_, bytes, granularity_);
}

void CudaHostMemoryProvider::release_reservation(void* base, std::size_t bytes) noexcept {
  free_address_space(base, bytes);
}

bool CudaHostMemoryProvider::map(void* addr, std::size_t bytes) noexcept {
  if (!ok_ || bytes == 0) return false;
  const CUdeviceptr ptr = reinterpret_cast<CUdeviceptr>(addr);
  CUmemGenericAllocationHandle handle = 0;
  // CUDA_ERROR_OUT_OF_MEMORY (the host cannot pin more) is the expected failure: the arena's miss.
  if (create_and_map(ptr, bytes, &prop_, &handle) != MapResult::mapped) return false;
  if (!set_access(ptr, bytes, access_.data(), access_.size(), device_)) {
    unmap_and_release(ptr, bytes, handle);
    return false;
  }
  // The CPU too (measured: accepted for HOST_NUMA memory, and the CPU reads what kernels wrote): the
  // driver calls this memory host memory, so code that trusts the driver rather than gpushim's answer
  // and touches it from the CPU reads the right bytes instead of faulting. Best effort.
  const CUmemAccessDesc cpu = cpu_access_to(prop_.location.id);
  if (real_driver().cuMemSetAccess(ptr, bytes, &cpu, 1) != CUDA_SUCCESS) {
    static bool reported = false;
    log_once(&reported, LogLevel::info, "GPUSHIM_SPILL=host: no CPU access to spilled memory (device %d)", device_);
  }
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!mappings_.record(static_cast<std::uintptr_t>(ptr), Mapping{handle, bytes})) {
      unmap_and_release(ptr, bytes, handle);
      return false;
    }
  }
  bytes_mapped_.fetch_add(bytes, std::memory_order_relaxed);
  tracing::record(tracing::EventKind::spill_map, device_, 0, ptr, bytes, backend_);
  return true;
}

void CudaHostMemoryProvider::unmap(void* addr, std::size_t bytes) noexcept {
  const CUdeviceptr ptr = reinterpret_cast<CUdeviceptr>(addr);
  Mapping mapping{};
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!mappings_.take(addr, bytes, &mapping)) return;
  }
  wait_for_device_work(context_);  // cuMemUnmap is not stream-ordered (providers/cuda_physical_memory.h)
  unmap_and_release(ptr, bytes, mapping.handle);
  bytes_mapped_.fetch_sub(bytes, std::memory_order_relaxed);
  tracing::record(tracing::EventKind::spill_unmap, device_, 0, ptr, bytes, backend_);
}

}  // namespace gpushim
