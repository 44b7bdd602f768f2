#include "providers/cuda_vmm_provider.h"

#include <new>

#include "annotations/nvtx_memory.h"
#include "annotations/nvtx_ranges.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"

namespace gpushim {

CudaVmmProvider::CudaVmmProvider(int device, tracing::BackendId backend) noexcept
    : device_(device), backend_(backend) {
  prop_.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop_.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop_.location.id = device;
  access_.location = prop_.location;
  access_.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  // Shareable as a file descriptor so blocks can be exported to other processes; if the driver refuses
  // it, map() drops the request once and memory is simply not exportable.
  prop_.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;

  const RealDriver& driver = real_driver();
  if (!driver.loaded || !driver.cuMemGetAllocationGranularity) return;
  driver.cuCtxGetCurrent(&context_);
  std::size_t granularity = 0;
  // The minimum granularity (2 MiB on the H100, equal to the recommended one there): the arena maps in
  // larger steps anyway, and the minimum lets it give back memory in the smallest pieces.
  CUresult rc = driver.cuMemGetAllocationGranularity(&granularity, &prop_, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (rc == CUDA_SUCCESS && granularity != 0) {
    granularity_ = granularity;
    ok_ = true;
    ipc::register_exportable_memory(this);
  } else {
    log(LogLevel::warn, "device %d: no virtual memory management (cuMemGetAllocationGranularity: %d)",
        device, static_cast<int>(rc));
  }
}

void* CudaVmmProvider::reserve(std::size_t bytes) noexcept {
  if (!ok_) return nullptr;
  CUdeviceptr base = 0;
  CUresult rc = real_driver().cuMemAddressReserve(&base, bytes, granularity_, 0, 0);
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::info, "device %d: cuMemAddressReserve(%zu) failed: %d", device_, bytes, static_cast<int>(rc));
    return nullptr;
  }
  return reinterpret_cast<void*>(base);
}

void CudaVmmProvider::release_reservation(void* base, std::size_t bytes) noexcept {
  if (!base) return;
  real_driver().cuMemAddressFree(reinterpret_cast<CUdeviceptr>(base), bytes);
}

bool CudaVmmProvider::map(void* addr, std::size_t bytes) noexcept {
  if (!ok_ || bytes == 0) return false;
  annotations::ScopedRange range(annotations::SlowEvent::arena_growth);
  const RealDriver& driver = real_driver();
  const CUdeviceptr ptr = reinterpret_cast<CUdeviceptr>(addr);
  CUmemGenericAllocationHandle handle = 0;
  CUresult rc = driver.cuMemCreate(&handle, bytes, &prop_, 0);
  if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_OUT_OF_MEMORY && prop_.requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE) {
    static bool reported = false;
    log_once(&reported, LogLevel::info, "device %d: shareable memory refused (%d); IPC export is off", device_,
             static_cast<int>(rc));
    prop_.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;  // racy only in which thread notices first
    rc = driver.cuMemCreate(&handle, bytes, &prop_, 0);
  }
  if (rc != CUDA_SUCCESS) {
    // CUDA_ERROR_OUT_OF_MEMORY is the expected failure; the arena turns it into a miss.
    if (rc != CUDA_ERROR_OUT_OF_MEMORY)
      log(LogLevel::info, "device %d: cuMemCreate(%zu) failed: %d", device_, bytes, static_cast<int>(rc));
    return false;
  }
  rc = driver.cuMemMap(ptr, bytes, 0, handle, 0);
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::info, "device %d: cuMemMap(%zu) failed: %d", device_, bytes, static_cast<int>(rc));
    driver.cuMemRelease(handle);
    return false;
  }
  rc = driver.cuMemSetAccess(ptr, bytes, &access_, 1);
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::info, "device %d: cuMemSetAccess(%zu) failed: %d", device_, bytes, static_cast<int>(rc));
    driver.cuMemUnmap(ptr, bytes);
    driver.cuMemRelease(handle);
    return false;
  }
  {
    std::lock_guard<std::mutex> guard(mutex_);
    try {
      mappings_[ptr] = Mapping{handle, bytes};
    } catch (...) {
      driver.cuMemUnmap(ptr, bytes);
      driver.cuMemRelease(handle);
      return false;
    }
  }
  // A heap for compute-sanitizer per mapping: the tool accepts a heap only over memory it tracks as
  // allocated, which for VMM is a mapped range (a bare reservation is ignored).
  annotations::on_memory_mapped(static_cast<std::uintptr_t>(ptr), bytes, device_);
  bytes_mapped_.fetch_add(bytes, std::memory_order_relaxed);
  tracing::record(tracing::EventKind::map, device_, 0, ptr, bytes, backend_);
  return true;
}

void CudaVmmProvider::unmap(void* addr, std::size_t bytes) noexcept {
  const CUdeviceptr ptr = reinterpret_cast<CUdeviceptr>(addr);
  Mapping mapping{};
  {
    std::lock_guard<std::mutex> guard(mutex_);
    auto it = mappings_.find(ptr);
    if (it == mappings_.end() || it->second.bytes != bytes) {
      // cuMemUnmap cannot split a mapping; an algorithm that asks for it has a bug. Refuse rather than
      // leave the driver half-unmapped.
      static bool reported = false;
      log_once(&reported, LogLevel::warn, "internal: unmap(%p, %zu) does not match one map()", addr, bytes);
      return;
    }
    mapping = it->second;
    mappings_.erase(it);
  }
  const RealDriver& driver = real_driver();
  // cuMemUnmap does not wait for the GPU: work still queued on this memory would fault (seen on the
  // H100 as "illegal memory access" when blocks go back at once under legacy-ordered reuse). Unmapping
  // is the slow path (20-30 us, and rare above the release threshold), so wait for the device first.
  wait_for_device_work();
  annotations::on_memory_unmapping(static_cast<std::uintptr_t>(ptr));  // the heap ends with the mapping
  driver.cuMemUnmap(ptr, bytes);
  ipc::on_physical_memory_released(mapping.handle);  // closes the exported descriptor, if any
  // The physical memory is freed once it is unmapped and released (the handle is the last reference).
  driver.cuMemRelease(mapping.handle);
  bytes_mapped_.fetch_sub(bytes, std::memory_order_relaxed);
  tracing::record(tracing::EventKind::unmap, device_, 0, ptr, bytes, backend_);
}

void CudaVmmProvider::wait_for_device_work() noexcept {
  const RealDriver& driver = real_driver();
  CUcontext current = nullptr;
  driver.cuCtxGetCurrent(&current);
  if (context_ == nullptr || current == context_) {
    driver.cuCtxSynchronize();
    return;
  }
  if (driver.cuCtxPushCurrent(context_) != CUDA_SUCCESS) return;
  driver.cuCtxSynchronize();
  CUcontext popped = nullptr;
  driver.cuCtxPopCurrent(&popped);
}

bool CudaVmmProvider::physical_handle_for(CUdeviceptr p, CUmemGenericAllocationHandle* handle,
                                          CUdeviceptr* chunk_base, std::size_t* chunk_size) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = mappings_.upper_bound(static_cast<std::uintptr_t>(p));
  if (it == mappings_.begin()) return false;
  --it;
  if (static_cast<std::uintptr_t>(p) - it->first >= it->second.bytes) return false;
  *handle = it->second.handle;
  *chunk_base = static_cast<CUdeviceptr>(it->first);
  *chunk_size = it->second.bytes;
  return true;
}

void CudaVmmProvider::reset_after_fork() noexcept { new (&mutex_) std::mutex(); }

}  // namespace gpushim
