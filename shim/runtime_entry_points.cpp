// cudaMalloc, cudaFree, cudaMallocAsync and cudaFreeAsync for programs that link the CUDA runtime as a
// shared library (libcudart.so: PyTorch, CuPy, nvcc -cudart shared), served without entering the runtime
// as shim/runtime_serving.h says. A preloaded definition comes first in the program's symbol lookup, so a
// shared runtime's callers reach these; what they leave to the runtime goes to the next definition, the
// runtime's own. A static runtime's calls are bound when the program is linked: gpushim redirects its
// functions instead (shim/static_runtime_redirects.cpp).
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <atomic>

#include "driver/real_driver.h"
#include "shim/driver_entry_points.h"
#include "shim/runtime_serving.h"

namespace {

using gpushim::shim::per_thread_stream;
using gpushim::shim::serve_free;
using gpushim::shim::serve_free_async;
using gpushim::shim::serve_malloc;
using gpushim::shim::serve_malloc_async;

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

}  // namespace

extern "C" {

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaMalloc(void** dev_ptr, size_t size) {
  return serve_malloc(runtime_malloc, dev_ptr, size);
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaFree(void* dev_ptr) { return serve_free(runtime_free, dev_ptr); }

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaMallocAsync(void** dev_ptr, size_t size, cudaStream_t stream) {
  return serve_malloc_async(runtime_malloc_async, dev_ptr, size, stream, stream);
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaMallocAsync_ptsz(void** dev_ptr, size_t size, cudaStream_t stream) {
  return serve_malloc_async(runtime_malloc_async_ptsz, dev_ptr, size, stream, per_thread_stream(stream));
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaFreeAsync(void* dev_ptr, cudaStream_t stream) {
  return serve_free_async(runtime_free_async, dev_ptr, stream, stream);
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaFreeAsync_ptsz(void* dev_ptr, cudaStream_t stream) {
  return serve_free_async(runtime_free_async_ptsz, dev_ptr, stream, per_thread_stream(stream));
}

}  // extern "C"
