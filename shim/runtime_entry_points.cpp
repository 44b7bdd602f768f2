// cudaMalloc and cudaFree for programs that link the CUDA runtime as a shared library (libcudart.so:
// PyTorch, CuPy, nvcc -cudart shared), served without entering the runtime.
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
using gpushim::shim::ReplayedCall;
using gpushim::shim::t_runtime_replay;
namespace router = gpushim::router;

using RuntimeMalloc = cudaError_t (*)(void**, size_t);
using RuntimeFree = cudaError_t (*)(void*);

// The runtime's own function: the next definition after gpushim's, in the program's lookup order.
// Resolved on first use (a cold path); a race resolves it twice to the same address.
void* runtime_function(std::atomic<void*>* slot, const char* name) noexcept {
  void* function = slot->load(std::memory_order_acquire);
  if (function == nullptr) {
    function = gpushim::real_dlsym(RTLD_NEXT, name);
    slot->store(function, std::memory_order_release);
  }
  return function;
}

std::atomic<void*> g_runtime_malloc{nullptr};
std::atomic<void*> g_runtime_free{nullptr};

__attribute__((noinline)) bool read_direct_setting() noexcept {
  const bool on = gpushim::settings().direct_cudart;
  if (on) {
    gpushim::log(gpushim::LogLevel::info,
                 "cudaMalloc/cudaFree of the shared CUDA runtime are served without entering it "
                 "(GPUSHIM_DIRECT_CUDART=0 sends them through the runtime)");
  }
  return on;
}

// Read once; inline, so that after the first call it is a guard load in the entry point, not a call.
__attribute__((always_inline)) inline bool serving_directly() noexcept {
  static const bool enabled = read_direct_setting();
  return enabled;
}

// Errors that say the runtime had work to do before the driver call (create or make current a context,
// initialise the driver): the runtime does it, then asks gpushim through cuMemAlloc/cuMemFree. The router
// answers them before it changes anything, so asking again is the same request.
bool runtime_prepares_first(CUresult answer) noexcept {
  return answer == CUDA_ERROR_INVALID_CONTEXT || answer == CUDA_ERROR_NOT_INITIALIZED ||
         answer == CUDA_ERROR_DEINITIALIZED || answer == CUDA_ERROR_CONTEXT_IS_DESTROYED;
}

// Without a runtime after gpushim (a program found our export through dlsym(RTLD_DEFAULT) but loaded no
// runtime), there is none to ask: the runtime's own answer for a driver it cannot use.
constexpr cudaError_t kNoRuntime = cudaErrorInitializationError;

cudaError_t runtime_malloc(void** dev_ptr, size_t size) noexcept {
  auto function = reinterpret_cast<RuntimeMalloc>(runtime_function(&g_runtime_malloc, "cudaMalloc"));
  return function ? function(dev_ptr, size) : kNoRuntime;
}

cudaError_t runtime_free(void* dev_ptr) noexcept {
  auto function = reinterpret_cast<RuntimeFree>(runtime_function(&g_runtime_free, "cudaFree"));
  return function ? function(dev_ptr) : kNoRuntime;
}

// The runtime's call, while its one cuMemAlloc/cuMemFree of `key` answers `answer`. Cleared after it
// returns whether or not the runtime asked (it may fail earlier, e.g. while it unloads at exit).
template <typename Call>
__attribute__((noinline)) cudaError_t through_runtime_replaying(ReplayedCall call, std::uintptr_t key,
                                                                 CUresult answer, Call runtime_call) noexcept {
  t_runtime_replay = {call, key, answer};
  const cudaError_t result = runtime_call();
  t_runtime_replay.call = ReplayedCall::none;
  return result;
}

}  // namespace

extern "C" {

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaMalloc(void** dev_ptr, size_t size) {
  if (__builtin_expect(dev_ptr == nullptr || size == 0 || driver_missing() || !serving_directly(), 0))
    return runtime_malloc(dev_ptr, size);
  CUdeviceptr block = 0;
  const CUresult answer = router::allocate(&block, size);
  if (__builtin_expect(answer == CUDA_SUCCESS, 1)) {
    *dev_ptr = reinterpret_cast<void*>(block);
    return cudaSuccess;
  }
  if (runtime_prepares_first(answer)) return runtime_malloc(dev_ptr, size);
  return through_runtime_replaying(ReplayedCall::allocate, size, answer,
                                   [&] { return runtime_malloc(dev_ptr, size); });
}

GPUSHIM_EXPORT cudaError_t CUDARTAPI cudaFree(void* dev_ptr) {
  if (__builtin_expect(dev_ptr == nullptr || driver_missing() || !serving_directly(), 0))
    return runtime_free(dev_ptr);
  const auto address = reinterpret_cast<CUdeviceptr>(dev_ptr);
  const CUresult answer = router::free(address);
  if (__builtin_expect(answer == CUDA_SUCCESS, 1)) return cudaSuccess;
  if (runtime_prepares_first(answer)) return runtime_free(dev_ptr);
  return through_runtime_replaying(ReplayedCall::free, address, answer, [&] { return runtime_free(dev_ptr); });
}

}  // extern "C"
