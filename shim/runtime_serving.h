// How gpushim serves the CUDA runtime's cudaMalloc, cudaFree, cudaMallocAsync and cudaFreeAsync without
// entering the runtime, whichever way the program links it: as a shared library, whose callers reach
// gpushim's exports of these names (shim/runtime_entry_points.cpp), or statically, whose functions
// gpushim redirects to its own (shim/static_runtime_redirects.cpp).
//
// Why: under gpushim the runtime's own code was about half of a cudaMalloc+cudaFree pair (~45-56 ns of
// ~90-100 ns on the H200's lower speed, docs/perf-notes.md, twenty-ninth session), and in a pair it calls
// the driver only for cuMemAlloc and cuMemFree (cuda-gdb over all of libcuda's exports), which are
// gpushim's own functions anyway.
//
// Only the common case is served: a current context, a size above zero, a pointer to write to.
// Everything else goes to the runtime's own function (`runtime` below) unchanged, and reaches gpushim
// through cuMemAlloc as before: a call without a current context (the runtime creates the primary one
// first), cudaMalloc of 0 bytes, cudaFree(0) (programs call it to create the context). An error the
// router answered is handed to the runtime too (shim/runtime_replay.h), which maps it to its own code
// and records it for cudaGetLastError, as it would have.
//
// The stream-ordered pair is served as the runtime's own call of cuMemAllocAsync / cuMemFreeAsync would
// be: the same router call with the same stream handle (the runtime's and the driver's stream handles
// are the same objects). A program built with a per-thread default stream calls the _ptsz forms, in
// which stream 0 is the calling thread's stream, as in the driver's _ptsz forms.
//
// GPUSHIM_DIRECT_CUDART=0 sends every call through the runtime.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config/settings.h"
#include "diagnostics/log.h"
#include "router/router.h"
#include "shim/driver_entry_points.h"
#include "shim/runtime_replay.h"

namespace gpushim::shim {

// How many of a static runtime's six functions gpushim redirected (shim/static_runtime_redirects.cpp),
// for the log line below.
inline std::atomic<int> g_static_runtime_redirects{0};

__attribute__((noinline)) inline bool read_direct_setting() noexcept {
  const bool on = settings().direct_cudart;
  if (on) {
    log(LogLevel::info,
        "cudaMalloc/cudaFree/cudaMallocAsync/cudaFreeAsync of the CUDA runtime are served without entering it "
        "(a shared runtime's; %d of a static runtime's 6 functions redirected; GPUSHIM_DIRECT_CUDART=0 "
        "sends them through the runtime)",
        g_static_runtime_redirects.load(std::memory_order_relaxed));
  }
  return on;
}

// Read once; inline, so that after the first call it is a guard load in the entry point, not a call.
__attribute__((always_inline)) inline bool serving_directly() noexcept {
  static const bool enabled = read_direct_setting();
  return enabled;
}

// Errors that say the runtime had work to do before the driver call (create or make current a context,
// initialise the driver): the runtime does it, then asks gpushim through the driver entry point. The
// router answers them before it changes anything, so asking again is the same request.
inline bool runtime_prepares_first(CUresult answer) noexcept {
  return answer == CUDA_ERROR_INVALID_CONTEXT || answer == CUDA_ERROR_NOT_INITIALIZED ||
         answer == CUDA_ERROR_DEINITIALIZED || answer == CUDA_ERROR_CONTEXT_IS_DESTROYED;
}

// An error the router answered, as the runtime answers it: the runtime's call, while its one driver call
// of this kind and `key` answers `answer`. Cleared after it returns whether or not the runtime asked (it
// may fail earlier, e.g. while it unloads at exit).
template <typename Call>
__attribute__((noinline)) cudaError_t runtime_answer(CUresult answer, ReplayedCall call, std::uintptr_t key,
                                                     Call runtime_call) noexcept {
  if (runtime_prepares_first(answer)) return runtime_call();
  t_runtime_replay = {call, key, answer};
  const cudaError_t result = runtime_call();
  t_runtime_replay.call = ReplayedCall::none;
  return result;
}

// The block the router placed, or the runtime's answer to its error. The router is asked before this is
// called: as an argument, `block` could be read before the call that writes it.
template <typename Call>
__attribute__((always_inline)) inline cudaError_t allocated(CUresult answer, CUdeviceptr block, void** dev_ptr,
                                                            ReplayedCall call, size_t size,
                                                            Call runtime_call) noexcept {
  if (__builtin_expect(answer == CUDA_SUCCESS, 1)) {
    *dev_ptr = reinterpret_cast<void*>(block);
    return cudaSuccess;
  }
  return runtime_answer(answer, call, size, runtime_call);
}

template <typename Call>
__attribute__((always_inline)) inline cudaError_t freed(CUresult answer, ReplayedCall call, CUdeviceptr address,
                                                        Call runtime_call) noexcept {
  if (__builtin_expect(answer == CUDA_SUCCESS, 1)) return cudaSuccess;
  return runtime_answer(answer, call, address, runtime_call);
}

// The calls gpushim leaves to the runtime before asking the router.
__attribute__((always_inline)) inline bool allocation_for_runtime(void** dev_ptr, size_t size) noexcept {
  return __builtin_expect(dev_ptr == nullptr || size == 0 || driver_missing() || !serving_directly(), 0);
}
__attribute__((always_inline)) inline bool free_for_runtime(void* dev_ptr) noexcept {
  return __builtin_expect(dev_ptr == nullptr || driver_missing() || !serving_directly(), 0);
}

// The four calls, each given the runtime's own function of the same name (a callable) for what it leaves
// to the runtime. `stream` is the handle the router gets: a _ptsz caller passes per_thread_stream(its own).
template <typename Runtime>
__attribute__((always_inline)) inline cudaError_t serve_malloc(Runtime& runtime, void** dev_ptr, size_t size) noexcept {
  if (allocation_for_runtime(dev_ptr, size)) return runtime(dev_ptr, size);
  CUdeviceptr block = 0;
  const CUresult answer = router::allocate(&block, size);
  return allocated(answer, block, dev_ptr, ReplayedCall::allocate, size, [=, &runtime] { return runtime(dev_ptr, size); });
}

template <typename Runtime>
__attribute__((always_inline)) inline cudaError_t serve_free(Runtime& runtime, void* dev_ptr) noexcept {
  if (free_for_runtime(dev_ptr)) return runtime(dev_ptr);
  const auto address = reinterpret_cast<CUdeviceptr>(dev_ptr);
  return freed(router::free(address), ReplayedCall::free, address, [=, &runtime] { return runtime(dev_ptr); });
}

template <typename Runtime>
__attribute__((always_inline)) inline cudaError_t serve_malloc_async(Runtime& runtime, void** dev_ptr, size_t size,
                                                                     cudaStream_t stream, CUstream served_on) noexcept {
  if (allocation_for_runtime(dev_ptr, size)) return runtime(dev_ptr, size, stream);
  CUdeviceptr block = 0;
  const CUresult answer = router::allocate_async(&block, size, served_on);
  return allocated(answer, block, dev_ptr, ReplayedCall::allocate_async, size,
                   [=, &runtime] { return runtime(dev_ptr, size, stream); });
}

template <typename Runtime>
__attribute__((always_inline)) inline cudaError_t serve_free_async(Runtime& runtime, void* dev_ptr, cudaStream_t stream,
                                                                   CUstream served_on) noexcept {
  if (free_for_runtime(dev_ptr)) return runtime(dev_ptr, stream);
  const auto address = reinterpret_cast<CUdeviceptr>(dev_ptr);
  return freed(router::free_async(address, served_on), ReplayedCall::free_async, address,
               [=, &runtime] { return runtime(dev_ptr, stream); });
}

}  // namespace gpushim::shim
