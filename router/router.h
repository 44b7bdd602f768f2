// The router: what the shim calls once it has turned a CUDA call into a request.
//
// It decides which backend serves a request (the device of the calling thread's current context, or
// the stream's device), knows which backend owns a pointer (pointers it does not own go to the real
// driver untouched), keeps freed blocks away from reuse until the GPU work issued before the free has
// finished (free fences), retries after releasing cached memory, and reports when memory runs out.
// Every function returns the CUresult the real driver would; none throws.
#pragma once

#include <cstddef>
#include <cuda.h>

namespace gpushim::router {

CUresult allocate(CUdeviceptr* out, std::size_t bytes) noexcept;                       // cuMemAlloc
CUresult free(CUdeviceptr p) noexcept;                                                  // cuMemFree
CUresult allocate_async(CUdeviceptr* out, std::size_t bytes, CUstream stream) noexcept; // cuMemAllocAsync
CUresult free_async(CUdeviceptr p, CUstream stream) noexcept;                           // cuMemFreeAsync
CUresult allocate_pitch(CUdeviceptr* out, std::size_t* pitch, std::size_t width_bytes, std::size_t height,
                        unsigned int element_size_bytes) noexcept;                      // cuMemAllocPitch
CUresult get_info(std::size_t* free_bytes, std::size_t* total_bytes) noexcept;          // cuMemGetInfo

// Stream bookkeeping the free fences need (the shim forwards these after the real call succeeded).
void on_stream_created(CUstream stream, unsigned int flags) noexcept;
void on_stream_destroying(CUstream stream) noexcept;   // before the real cuStreamDestroy
void on_capture_begin(CUstream stream) noexcept;       // after a successful cuStreamBeginCapture*
void on_capture_end(CUstream stream) noexcept;         // after cuStreamEndCapture (success or not)
// After a cuCtxSynchronize of `context` returned success (nullptr: the calling thread's current one): the
// idle checks of that context's device, which otherwise run only in frees (router.cpp, idle_check), so a
// program that stopped freeing still gives idle memory back, the free blocks its threads keep included
// once the release is due counting them (gather_idle_blocks). Only there, and only for that device: the
// checks may unmap, and cuMemUnmap first waits for the whole context. After a stream or event
// synchronization, or for another device, that is a wait the program did not ask for; one that holds a
// lock across cudaStreamSynchronize(s1), which a host function queued on s2 needs, would deadlock.
void after_context_synchronize(CUcontext context) noexcept;

// Ownership lookup for the ecosystem hooks (pointer queries, IPC): the block that contains `p`.
struct BlockInfo {
  CUdeviceptr base = 0;
  std::size_t size = 0;  // the size the program asked for
  int device = -1;
  bool spilled = false;  // served from host memory (GPUSHIM_SPILL=host, docs/host-spill.md)
};
bool find_block(CUdeviceptr p, BlockInfo* out) noexcept;

}  // namespace gpushim::router
