#include "providers/cuda_physical_memory.h"

#include "diagnostics/log.h"
#include "driver/real_driver.h"
#include "ipc/exportable_memory.h"

namespace gpushim {

CUmemAllocationProp pinned_memory_on(int device) noexcept {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

CUmemAccessDesc read_write_access_from(int device) noexcept {
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = device;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  return access;
}

CUresult minimum_granularity(const CUmemAllocationProp& prop, std::size_t* granularity) noexcept {
  // The minimum (2 MiB on the H100, equal to the recommended one there): the arena maps in larger
  // steps anyway, and the minimum lets it give back memory in the smallest pieces.
  return real_driver().cuMemGetAllocationGranularity(granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
}

void* reserve_address_space(int device, std::size_t bytes, std::size_t alignment) noexcept {
  CUdeviceptr base = 0;
  CUresult rc = real_driver().cuMemAddressReserve(&base, bytes, alignment, 0, 0);
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::info, "device %d: cuMemAddressReserve(%zu) failed: %d", device, bytes, static_cast<int>(rc));
    return nullptr;
  }
  return reinterpret_cast<void*>(base);
}

void free_address_space(void* base, std::size_t bytes) noexcept {
  if (base) real_driver().cuMemAddressFree(reinterpret_cast<CUdeviceptr>(base), bytes);
}

MapResult create_and_map(CUdeviceptr at, std::size_t bytes, CUmemAllocationProp* prop,
                         CUmemGenericAllocationHandle* handle) noexcept {
  const RealDriver& driver = real_driver();
  const int device = prop->location.id;
  CUresult rc = driver.cuMemCreate(handle, bytes, prop, 0);
  if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_OUT_OF_MEMORY && prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE) {
    static bool reported = false;
    log_once(&reported, LogLevel::info, "device %d: shareable memory refused (%d); IPC export is off", device,
             static_cast<int>(rc));
    prop->requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;  // racy only in which thread notices first
    rc = driver.cuMemCreate(handle, bytes, prop, 0);
  }
  if (rc == CUDA_ERROR_OUT_OF_MEMORY) return MapResult::out_of_memory;
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::info, "device %d: cuMemCreate(%zu) failed: %d", device, bytes, static_cast<int>(rc));
    return MapResult::failed;
  }
  rc = driver.cuMemMap(at, bytes, 0, *handle, 0);
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::info, "device %d: cuMemMap(%zu) failed: %d", device, bytes, static_cast<int>(rc));
    driver.cuMemRelease(*handle);
    return MapResult::failed;
  }
  return MapResult::mapped;
}

bool set_access(CUdeviceptr at, std::size_t bytes, const CUmemAccessDesc* access, std::size_t count,
                int device) noexcept {
  CUresult rc = real_driver().cuMemSetAccess(at, bytes, access, count);
  if (rc == CUDA_SUCCESS) return true;
  log(LogLevel::info, "device %d: cuMemSetAccess(%zu) for %zu device(s) failed: %d", device, bytes, count,
      static_cast<int>(rc));
  return false;
}

void unmap_and_release(CUdeviceptr at, std::size_t bytes, CUmemGenericAllocationHandle handle) noexcept {
  const RealDriver& driver = real_driver();
  driver.cuMemUnmap(at, bytes);
  ipc::on_physical_memory_released(handle);  // closes the exported descriptor, if any
  driver.cuMemRelease(handle);
}

void wait_for_device_work(CUcontext context) noexcept {
  const RealDriver& driver = real_driver();
  if (context != nullptr) {
    CUcontext current = nullptr;
    driver.cuCtxGetCurrent(&current);
    if (current != context) {
      if (driver.cuCtxPushCurrent(context) != CUDA_SUCCESS) return;
      driver.cuCtxSynchronize();
      CUcontext popped = nullptr;
      driver.cuCtxPopCurrent(&popped);
      return;
    }
  }
  driver.cuCtxSynchronize();
}

}  // namespace gpushim
