// gpushim's versions of the driver entry points it serves (driver_entry_points.cpp). Each has exactly
// the prototype of the driver symbol it is exported as; the _ptsz ones are the per-thread-default-stream
// variants, in which stream 0 means CU_STREAM_PER_THREAD.
#pragma once

#include <cuda.h>

#include "driver/real_driver.h"

#define GPUSHIM_EXPORT __attribute__((visibility("default")))

extern "C" {
GPUSHIM_EXPORT CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width_bytes,
                                                   size_t height, unsigned int element_size_bytes);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream stream);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUstream stream);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr dptr, CUstream stream);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream);

GPUSHIM_EXPORT CUresult CUDAAPI cuStreamCreate(CUstream* stream, unsigned int flags);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamCreateWithPriority(CUstream* stream, unsigned int flags, int priority);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamDestroy_v2(CUstream stream);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode mode);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamBeginCaptureToGraph(CUstream stream, CUgraph graph,
                                                            const CUgraphNode* dependencies,
                                                            const CUgraphEdgeData* dependency_data,
                                                            size_t dependency_count, CUstreamCaptureMode mode);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph graph,
                                                                 const CUgraphNode* dependencies,
                                                                 const CUgraphEdgeData* dependency_data,
                                                                 size_t dependency_count,
                                                                 CUstreamCaptureMode mode);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamEndCapture(CUstream stream, CUgraph* graph);
GPUSHIM_EXPORT CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream stream, CUgraph* graph);

// cuda.h maps the name cuGetProcAddress to cuGetProcAddress_v2; the v1 symbol (CUDA 11.3, no
// symbolStatus) keeps its own name through an asm label.
GPUSHIM_EXPORT CUresult CUDAAPI cuGetProcAddress_v2(const char* symbol, void** pfn, int cuda_version,
                                                    cuuint64_t flags, CUdriverProcAddressQueryResult* status);
// Ecosystem hooks (shim/pointer_query_hooks.cpp, shim/ipc_hooks.cpp): gpushim blocks answer range
// queries with their own bounds and travel between processes through gpushim's IPC handles.
GPUSHIM_EXPORT CUresult CUDAAPI cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuPointerGetAttributes(unsigned int count, CUpointer_attribute* attributes,
                                                       void** data, CUdeviceptr ptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr ptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuIpcGetMemHandle(CUipcMemHandle* handle, CUdeviceptr ptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuIpcOpenMemHandle_v2(CUdeviceptr* ptr, CUipcMemHandle handle, unsigned int flags);
GPUSHIM_EXPORT CUresult CUDAAPI gpushim_cuIpcOpenMemHandle_v1(CUdeviceptr* ptr, CUipcMemHandle handle,
                                                              unsigned int flags) __asm__("cuIpcOpenMemHandle");
GPUSHIM_EXPORT CUresult CUDAAPI cuIpcCloseMemHandle(CUdeviceptr ptr);
// Peer access follows the program (shim/peer_access_hooks.cpp).
GPUSHIM_EXPORT CUresult CUDAAPI cuCtxEnablePeerAccess(CUcontext peer_context, unsigned int flags);
GPUSHIM_EXPORT CUresult CUDAAPI cuCtxDisablePeerAccess(CUcontext peer_context);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* map, size_t count);

GPUSHIM_EXPORT CUresult CUDAAPI gpushim_cuGetProcAddress_v1(const char* symbol, void** pfn, int cuda_version,
                                                            cuuint64_t flags) __asm__("cuGetProcAddress");
}

namespace gpushim::shim {
// Without a driver (libcuda.so.1 absent) the entry points answer CUDA_ERROR_NOT_INITIALIZED, and the
// runtime's (shim/runtime_entry_points.cpp) leave the call to the runtime, touching nothing.
inline bool driver_missing() noexcept { return !real_driver().loaded; }

// In a _ptsz entry point (the driver's or the runtime's) the null stream is the calling thread's default
// stream. The router and the real default-stream entry points take the explicit handle, which means the
// same thing everywhere.
inline CUstream per_thread_stream(CUstream stream) noexcept {
  return stream == nullptr ? CU_STREAM_PER_THREAD : stream;
}
}  // namespace gpushim::shim
