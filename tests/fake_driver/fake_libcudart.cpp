// A stand-in for libcudart.so.13 in CPU tests: just enough of the CUDA runtime to test what gpushim does
// with a shared runtime's cudaMalloc, cudaFree, cudaMallocAsync and cudaFreeAsync
// (shim/runtime_entry_points.cpp). Like the real one (docs/measured-facts.md) it finds the driver with
// dlopen("libcuda.so.1") and dlsym("cuGetProcAddress_v2"), resolves every driver function through that
// (under gpushim: gpushim's own cuMemAlloc, cuMemFree and the Async pair; the _ptsz forms for the
// runtime's _ptsz functions), makes device 0's primary context current on a thread that has none, maps
// the driver's errors to its own codes and keeps the last one for cudaGetLastError.
//
// Test-only export: fake_cudart_calls(name), how often the runtime function `name` was entered (any of
// the six above; -1 for another name).
//
// Built with FAKE_CUDART_STATIC it is a statically linked runtime instead
// (shim/static_runtime_redirects.cpp): the six functions are the bodies fake_static_<name>, entered through
// tests/fake_driver/fake_static_cudart_entries.S, which gives each the real static runtime's prologue, and
// it defines __cudaRegisterFatBinary, which gpushim takes as the mark of a static runtime (unless
// FAKE_CUDART_UNMARKED).
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <atomic>
#include <cstring>

#if defined(FAKE_CUDART_STATIC)
#define RUNTIME_FUNCTION(name) fake_static_##name
#else
#define RUNTIME_FUNCTION(name) name
#endif

namespace {

using ProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

template <typename Function>
Function driver_function(const char* name, int version, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
  static void* const libcuda = dlopen("libcuda.so.1", RTLD_NOW);
  static const auto get_proc = libcuda ? reinterpret_cast<ProcAddress>(dlsym(libcuda, "cuGetProcAddress_v2")) : nullptr;
  void* function = nullptr;
  CUdriverProcAddressQueryResult status;
  if (get_proc == nullptr || get_proc(name, &function, version, flags, &status) != CUDA_SUCCESS) return nullptr;
  return reinterpret_cast<Function>(function);
}

// How often each runtime function was entered, by name.
struct Entries {
  const char* name;
  std::atomic<int> calls{0};
};
Entries entries[] = {{"cudaMalloc"},           {"cudaFree"},      {"cudaMallocAsync"},
                     {"cudaMallocAsync_ptsz"}, {"cudaFreeAsync"}, {"cudaFreeAsync_ptsz"}};
void entered(const char* name) {
  for (Entries& e : entries)
    if (std::strcmp(e.name, name) == 0) ++e.calls;
}
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t recorded(cudaError_t error) {
  if (error != cudaSuccess) last_error = error;
  return error;
}

cudaError_t runtime_error(CUresult result) {
  switch (result) {
    case CUDA_SUCCESS: return cudaSuccess;
    case CUDA_ERROR_OUT_OF_MEMORY: return cudaErrorMemoryAllocation;
    case CUDA_ERROR_INVALID_VALUE: return cudaErrorInvalidValue;
    default: return cudaErrorUnknown;
  }
}

// The runtime's lazy start on this thread: the primary context of device 0 when none is current.
cudaError_t ensure_context() {
  using GetCurrent = CUresult (*)(CUcontext*);
  using Retain = CUresult (*)(CUcontext*, CUdevice);
  using SetCurrent = CUresult (*)(CUcontext);
  static const auto get_current = driver_function<GetCurrent>("cuCtxGetCurrent", 4000);
  static const auto retain = driver_function<Retain>("cuDevicePrimaryCtxRetain", 7000);
  static const auto set_current = driver_function<SetCurrent>("cuCtxSetCurrent", 4000);
  if (!get_current || !retain || !set_current) return cudaErrorInitializationError;
  CUcontext context = nullptr;
  if (get_current(&context) == CUDA_SUCCESS && context != nullptr) return cudaSuccess;
  if (retain(&context, 0) != CUDA_SUCCESS || set_current(context) != CUDA_SUCCESS) return cudaErrorInitializationError;
  return cudaSuccess;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int fake_cudart_calls(const char* name) {
  for (const Entries& e : entries)
    if (std::strcmp(e.name, name) == 0) return e.calls.load();
  return -1;
}

cudaError_t CUDARTAPI RUNTIME_FUNCTION(cudaMalloc)(void** dev_ptr, size_t size) {
  entered("cudaMalloc");
  if (dev_ptr == nullptr) return recorded(cudaErrorInvalidValue);
  *dev_ptr = nullptr;
  if (size == 0) return cudaSuccess;  // the runtime's answer: no block, no error
  if (cudaError_t error = ensure_context(); error != cudaSuccess) return recorded(error);
  using MemAlloc = CUresult (*)(CUdeviceptr*, size_t);
  static const auto mem_alloc = driver_function<MemAlloc>("cuMemAlloc", 3020);
  CUdeviceptr block = 0;
  const cudaError_t error = runtime_error(mem_alloc(&block, size));
  if (error == cudaSuccess) *dev_ptr = reinterpret_cast<void*>(block);
  return recorded(error);
}

cudaError_t CUDARTAPI RUNTIME_FUNCTION(cudaFree)(void* dev_ptr) {
  entered("cudaFree");
  if (cudaError_t error = ensure_context(); error != cudaSuccess) return recorded(error);
  if (dev_ptr == nullptr) return cudaSuccess;  // cudaFree(0): the context, nothing else
  using MemFree = CUresult (*)(CUdeviceptr);
  static const auto mem_free = driver_function<MemFree>("cuMemFree", 3020);
  return recorded(runtime_error(mem_free(reinterpret_cast<CUdeviceptr>(dev_ptr))));
}

}  // extern "C"

namespace {

using MemAllocAsync = CUresult (*)(CUdeviceptr*, size_t, CUstream);
using MemFreeAsync = CUresult (*)(CUdeviceptr, CUstream);

// The runtime's _ptsz functions resolve the driver's _ptsz forms (the per-thread default stream flag).
cudaError_t malloc_async(MemAllocAsync mem_alloc, void** dev_ptr, size_t size, cudaStream_t stream) {
  if (dev_ptr == nullptr) return recorded(cudaErrorInvalidValue);
  *dev_ptr = nullptr;
  if (cudaError_t error = ensure_context(); error != cudaSuccess) return recorded(error);
  CUdeviceptr block = 0;
  const cudaError_t error = runtime_error(mem_alloc(&block, size, stream));
  if (error == cudaSuccess) *dev_ptr = reinterpret_cast<void*>(block);
  return recorded(error);
}

cudaError_t free_async(MemFreeAsync mem_free, void* dev_ptr, cudaStream_t stream) {
  if (cudaError_t error = ensure_context(); error != cudaSuccess) return recorded(error);
  return recorded(runtime_error(mem_free(reinterpret_cast<CUdeviceptr>(dev_ptr), stream)));
}

}  // namespace

extern "C" {

cudaError_t CUDARTAPI RUNTIME_FUNCTION(cudaMallocAsync)(void** dev_ptr, size_t size, cudaStream_t stream) {
  entered("cudaMallocAsync");
  static const auto mem_alloc = driver_function<MemAllocAsync>("cuMemAllocAsync", 11020);
  return malloc_async(mem_alloc, dev_ptr, size, stream);
}

cudaError_t CUDARTAPI RUNTIME_FUNCTION(cudaMallocAsync_ptsz)(void** dev_ptr, size_t size, cudaStream_t stream) {
  entered("cudaMallocAsync_ptsz");
  static const auto mem_alloc =
      driver_function<MemAllocAsync>("cuMemAllocAsync", 11020, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  return malloc_async(mem_alloc, dev_ptr, size, stream);
}

cudaError_t CUDARTAPI RUNTIME_FUNCTION(cudaFreeAsync)(void* dev_ptr, cudaStream_t stream) {
  entered("cudaFreeAsync");
  static const auto mem_free = driver_function<MemFreeAsync>("cuMemFreeAsync", 11020);
  return free_async(mem_free, dev_ptr, stream);
}

cudaError_t CUDARTAPI RUNTIME_FUNCTION(cudaFreeAsync_ptsz)(void* dev_ptr, cudaStream_t stream) {
  entered("cudaFreeAsync_ptsz");
  static const auto mem_free =
      driver_function<MemFreeAsync>("cuMemFreeAsync", 11020, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  return free_async(mem_free, dev_ptr, stream);
}

#if defined(FAKE_CUDART_STATIC) && !defined(FAKE_CUDART_UNMARKED)
// The static runtime's mark; never called here. FAKE_CUDART_UNMARKED leaves it out: a program that defines
// the runtime's names without being the runtime, which gpushim must leave alone.
__attribute__((visibility("hidden"))) void** CUDARTAPI __cudaRegisterFatBinary(void*) { return nullptr; }
#endif

cudaError_t CUDARTAPI cudaGetLastError() {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

}  // extern "C"
