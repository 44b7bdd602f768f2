#include "providers/cuda_vmm_provider.h"

#include <new>

#include "annotations/nvtx_memory.h"
#include "annotations/nvtx_ranges.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"

namespace gpushim {

CudaVmmProvider::CudaVmmProvider(int device, tracing::BackendId backend) noexcept
    : device_(device), backend_(backend) {
  prop_ = pinned_memory_on(device);
  access_ = read_write_access_from(device);
  // Shareable as a file descriptor so blocks can be exported to other processes; if the driver refuses
  // it, map() drops the request once and memory is simply not exportable.
  prop_.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;

  const RealDriver& driver = real_driver();
  if (!driver.loaded || !driver.cuMemGetAllocationGranularity) return;
  driver.cuCtxGetCurrent(&context_);
  std::size_t granularity = 0;
  CUresult rc = minimum_granularity(prop_, &granularity);
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
  return reserve_address_space(device_, bytes, granularity_);
}

void CudaVmmProvider::release_reservation(void* base, std::size_t bytes) noexcept {
  free_address_space(base, bytes);
}

bool CudaVmmProvider::map(void* addr, std::size_t bytes) noexcept {
  if (!ok_ || bytes == 0) return false;
  annotations::ScopedRange range(annotations::SlowEvent::arena_growth);
  const CUdeviceptr ptr = reinterpret_cast<CUdeviceptr>(addr);
  CUmemGenericAllocationHandle handle = 0;
  // CUDA_ERROR_OUT_OF_MEMORY is the expected failure; the arena turns it into a miss.
  if (create_and_map(ptr, bytes, &prop_, &handle) != MapResult::mapped) return false;
  if (!set_access(ptr, bytes, &access_, 1, device_)) {
    unmap_and_release(ptr, bytes, handle);
    return false;
  }
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!mappings_.record(static_cast<std::uintptr_t>(ptr), Mapping{handle, bytes})) {
      unmap_and_release(ptr, bytes, handle);
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
    if (!mappings_.take(addr, bytes, &mapping)) return;
  }
  // The device this provider was built for, whichever context the freeing thread has current.
  wait_for_device_work(context_);
  annotations::on_memory_unmapping(static_cast<std::uintptr_t>(ptr));  // the heap ends with the mapping
  unmap_and_release(ptr, bytes, mapping.handle);
  bytes_mapped_.fetch_sub(bytes, std::memory_order_relaxed);
  tracing::record(tracing::EventKind::unmap, device_, 0, ptr, bytes, backend_);
}

bool CudaVmmProvider::physical_handle_for(CUdeviceptr p, CUmemGenericAllocationHandle* handle,
                                          CUdeviceptr* chunk_base, std::size_t* chunk_size) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  std::uintptr_t base = 0;
  const Mapping* mapping = mappings_.covering(static_cast<std::uintptr_t>(p), &base);
  if (!mapping) return false;
  *handle = mapping->handle;
  *chunk_base = static_cast<CUdeviceptr>(base);
  *chunk_size = mapping->bytes;
  return true;
}

void CudaVmmProvider::reset_after_fork() noexcept { new (&mutex_) std::mutex(); }

}  // namespace gpushim
