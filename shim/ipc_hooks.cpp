// cuIpcGetMemHandle / cuIpcOpenMemHandle / cuIpcCloseMemHandle: gpushim blocks and gpushim handles go
// to ipc/cuda_ipc.h; everything else (pointers gpushim does not own, the passthrough backend's
// cuMemAlloc blocks, driver handles) goes to the real driver untouched. Exported through
// shim/exports.map; rows in driver_substitutions.cpp (docs/ecosystem.md).
#include <cuda.h>

#include "annotations/nvtx_ranges.h"
#include "driver/real_driver.h"
#include "ipc/cuda_ipc.h"
#include "router/router.h"

#define GPUSHIM_EXPORT __attribute__((visibility("default")))

extern "C" {
GPUSHIM_EXPORT CUresult CUDAAPI cuIpcGetMemHandle(CUipcMemHandle* handle, CUdeviceptr ptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuIpcOpenMemHandle_v2(CUdeviceptr* ptr, CUipcMemHandle handle, unsigned int flags);
// The CUDA 4.1 symbol: same prototype, older name; cuda.h's macro renames the other one.
GPUSHIM_EXPORT CUresult CUDAAPI gpushim_cuIpcOpenMemHandle_v1(CUdeviceptr* ptr, CUipcMemHandle handle,
                                                              unsigned int flags) __asm__("cuIpcOpenMemHandle");
GPUSHIM_EXPORT CUresult CUDAAPI cuIpcCloseMemHandle(CUdeviceptr ptr);
}

namespace {

using gpushim::real_driver;
namespace annotations = gpushim::annotations;
namespace ipc = gpushim::ipc;
namespace router = gpushim::router;

}  // namespace

extern "C" {

CUresult CUDAAPI cuIpcGetMemHandle(CUipcMemHandle* handle, CUdeviceptr ptr) {
  const auto& driver = real_driver();
  if (driver.cuIpcGetMemHandle == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  router::BlockInfo block;
  if (handle != nullptr && router::find_block(ptr, &block)) {
    annotations::ScopedRange range(annotations::SlowEvent::ipc_export);
    bool handled = false;
    const CUresult result = ipc::export_block(handle, ipc::BlockToExport{block.base, block.size, block.device}, &handled);
    if (handled) return result;
  }
  return driver.cuIpcGetMemHandle(handle, ptr);
}

CUresult CUDAAPI cuIpcOpenMemHandle_v2(CUdeviceptr* ptr, CUipcMemHandle handle, unsigned int flags) {
  const auto& driver = real_driver();
  if (driver.cuIpcOpenMemHandle == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  if (!ipc::is_gpushim_handle(handle)) return driver.cuIpcOpenMemHandle(ptr, handle, flags);
  annotations::ScopedRange range(annotations::SlowEvent::ipc_import);
  return ipc::open_handle(ptr, handle, flags);
}

CUresult CUDAAPI gpushim_cuIpcOpenMemHandle_v1(CUdeviceptr* ptr, CUipcMemHandle handle, unsigned int flags) {
  return cuIpcOpenMemHandle_v2(ptr, handle, flags);
}

CUresult CUDAAPI cuIpcCloseMemHandle(CUdeviceptr ptr) {
  const auto& driver = real_driver();
  if (driver.cuIpcCloseMemHandle == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  bool handled = false;
  const CUresult result = ipc::close_handle(ptr, &handled);
  return handled ? result : driver.cuIpcCloseMemHandle(ptr);
}

}  // extern "C"
