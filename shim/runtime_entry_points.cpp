// cudaMalloc, cudaFree, cudaMallocAsync and cudaFreeAsync for programs that link the CUDA runtime as a
// shared library (libcudart.so: PyTorch, CuPy, nvcc -cudart shared), served without entering the runtime.
//
// Why: under gpushim the runtime's own code was about half of a cudaMalloc+cudaFree pair (~45-56 ns of
// ~90-100 ns on the H200's lower speed, docs/perf-notes.md, twenty-ninth session), and in a pair it calls
// the driver only for cuMemAlloc and cuMemFree (cuda-gdb over all of libcuda's exports), which are
// gpushim's own functions anyway. A preloaded definition comes first in the program's symbol lookup, so
// a shared runtime's callers reach these. A static runtime's calls are bound when the program is linked:
// they keep reaching gpushim through the driver entry points (shim/proc_address.cpp).
//
// Only the common case is served here: a current context, a size above zero, a pointer to write to.
// Everything else goes to the runtime unchanged and reaches gpushim through cuMemAlloc as before: a
// call without a current context (the runtime creates the primary one first), cudaMalloc of 0 bytes,
// cudaFree(0) (programs call it to create the context). An error the router answered is handed to the
// runtime too (shim/runtime_replay.h), which maps it to its own code and records it for
// cudaGetLastError, as it would have.
//
// The stream-ordered pair is served the same way, as the runtime's own call of cuMemAllocAsync /
// cuMemFreeAsync would be: the same router call with the same stream handle (the runtime's and the
// driver's stream handles are the same objects). A program built with a per-thread default stream calls
// the _ptsz forms, in which stream 0 is the calling thread's stream, as in the driver's _ptsz forms.
//
// GPUSHIM_DIRECT_CUDART=0 sends every call through the runtime.
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdint>

#include "config/settings.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"
#include "router/router.h"
#include "shim/driver_entry_points.h"
#include "shim/runtime_replay.h"

namespace {

using gpushim::shim::driver_missing;
using gpushim::shim::per_thread_stream;
using gpushim::shim::ReplayedCall;
using gpushim::shim::t_runtime_replay;
namespace router = gpushim::router;

// Without a runtime after gpushim (a program found our export through dlsym(RTLD_DEFAULT) but loaded no
// runtime), there is none to ask: the runtime's own answer for a driver it cannot use.
constexpr cudaError_t kNoRuntime = cudaErrorInitializationError;

// One of the runtime's own functions: the next definition after gpushim's, in the program's lookup
// order. Resolved on first use (a cold path); a race resolves it twice to the same address.
template <typename Function>
class RuntimeFunction {
 public:
  explicit constexpr RuntimeFunction(const char* name) noexcept : name_(name) {}

  template <typename... Args>
  cudaError_t operator()(Args... args) noexcept {
    void* function = slot_.load(std::memory_order_acquire);
    if (function == nullptr) {
      function = gpushim::real_dlsym(RTLD_NEXT, name_);
      slot_.store(function, std::memory_order_release);
    }
    return function ? reinterpret_cast<Function>(function)(args...) : kNoRuntime;
  }

 private:
  const char* name_;
  std::atomic<void*> slot_{nullptr};
};

RuntimeFunction<cudaError_t (*)(void**, size_t)> runtime_malloc{"cudaMalloc"};
RuntimeFunction<cudaError_t (*)(void*)> runtime_free{"cudaFree"};
RuntimeFunction<cudaError_t (*)(void**, size_t, cudaStream_t)> runtime_malloc_async{"cudaMallocAsync"};
RuntimeFunction<cudaError_t (*)(void**, size_t, cudaStream_t)> runtime_malloc_async_ptsz{"cudaMallocAsync_ptsz"};
RuntimeFunction<cudaError_t (*)(void*, cudaStream_t)> runtime_free_async{"cudaFreeAsync"};
RuntimeFunction<cudaError_t (*)(void*, cudaStream_t)> runtime_free_async_ptsz{"cudaFreeAsync_ptsz"};

__attribute__((noinline)) bool read_direct_setting() noexcept {
  const bool on = gpushim::settings().direct_cudart;
  if (on) {
    gpushim::log(gpushim::LogLevel::info,
                 "cudaMalloc/cudaFree/cudaMallocAsync/cudaFreeAsync of the shared CUDA runtime are served "
                 "without entering it (GPUSHIM_DIRECT_CUDART=0 sends them through the runtime)");
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
bool runtime_prepares_first(CUresult answer) noexcept {
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

}  // namespace

extern "C" {

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaMalloc(void** dev_ptr, size_t size) {
  if (allocation_for_runtime(dev_ptr, size)) return runtime_malloc(dev_ptr, size);
  CUdeviceptr block = 0;
  const CUresult answer = router::allocate(&block, size);
  return allocated(answer, block, dev_ptr, ReplayedCall::allocate, size, [=] { return runtime_malloc(dev_ptr, size); });
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaFree(void* dev_ptr) {
  if (free_for_runtime(dev_ptr)) return runtime_free(dev_ptr);
  const auto address = reinterpret_cast<CUdeviceptr>(dev_ptr);
  return freed(router::free(address), ReplayedCall::free, address, [=] { return runtime_free(dev_ptr); });
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaMallocAsync(void** dev_ptr, size_t size, cudaStream_t stream) {
  if (allocation_for_runtime(dev_ptr, size)) return runtime_malloc_async(dev_ptr, size, stream);
  CUdeviceptr block = 0;
  const CUresult answer = router::allocate_async(&block, size, stream);
  return allocated(answer, block, dev_ptr, ReplayedCall::allocate_async, size,
                   [=] { return runtime_malloc_async(dev_ptr, size, stream); });
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaMallocAsync_ptsz(void** dev_ptr, size_t size, cudaStream_t stream) {
  if (allocation_for_runtime(dev_ptr, size)) return runtime_malloc_async_ptsz(dev_ptr, size, stream);
  CUdeviceptr block = 0;
  const CUresult answer = router::allocate_async(&block, size, per_thread_stream(stream));
  return allocated(answer, block, dev_ptr, ReplayedCall::allocate_async, size,
                   [=] { return runtime_malloc_async_ptsz(dev_ptr, size, stream); });
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaFreeAsync(void* dev_ptr, cudaStream_t stream) {
  if (free_for_runtime(dev_ptr)) return runtime_free_async(dev_ptr, stream);
  const auto address = reinterpret_cast<CUdeviceptr>(dev_ptr);
  return freed(router::free_async(address, stream), ReplayedCall::free_async, address,
               [=] { return runtime_free_async(dev_ptr, stream); });
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaFreeAsync_ptsz(void* dev_ptr, cudaStream_t stream) {
  if (free_for_runtime(dev_ptr)) return runtime_free_async_ptsz(dev_ptr, stream);
  const auto address = reinterpret_cast<CUdeviceptr>(dev_ptr);
  return freed(router::free_async(address, per_thread_stream(stream)), ReplayedCall::free_async, address,
               [=] { return runtime_free_async_ptsz(dev_ptr, stream); });
}

}  // extern "C"
