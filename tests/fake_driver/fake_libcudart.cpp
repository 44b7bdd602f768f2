// A stand-in for libcudart.so.13 in CPU tests: just enough of the CUDA runtime to test what gpushim does
// with a shared runtime's cudaMalloc and cudaFree (shim/runtime_entry_points.cpp). Like the real one
// (docs/measured-facts.md) it finds the driver with dlopen("libcuda.so.1") and dlsym("cuGetProcAddress_v2"),
// resolves every driver function through that (under gpushim: gpushim's own cuMemAlloc and cuMemFree),
// makes device 0's primary context current on a thread that has none, maps the driver's errors to its
// own codes and keeps the last one for cudaGetLastError.
//
// Test-only export: fake_cudart_calls("cudaMalloc" | "cudaFree"), how often the runtime was entered.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <atomic>
#include <cstring>

namespace {

using ProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

template <typename Function>
Function driver_function(const char* name, int version) {
  static void* const libcuda = dlopen("libcuda.so.1", RTLD_NOW);
  static const auto get_proc = libcuda ? reinterpret_cast<ProcAddress>(dlsym(libcuda, "cuGetProcAddress_v2")) : nullptr;
  void* function = nullptr;
  CUdriverProcAddressQueryResult status;
  if (get_proc == nullptr || get_proc(name, &function, version, CU_GET_PROC_ADDRESS_DEFAULT, &status) != CUDA_SUCCESS)
    return nullptr;
  return reinterpret_cast<Function>(function);
}

std::atomic<int> malloc_calls{0};
std::atomic<int> free_calls{0};
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
  if (std::strcmp(name, "cudaMalloc") == 0) return malloc_calls.load();
  if (std::strcmp(name, "cudaFree") == 0) return free_calls.load();
  return -1;
}

cudaError_t CUDARTAPI cudaMalloc(void** dev_ptr, size_t size) {
  ++malloc_calls;
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

cudaError_t CUDARTAPI cudaFree(void* dev_ptr) {
  ++free_calls;
  if (cudaError_t error = ensure_context(); error != cudaSuccess) return recorded(error);
  if (dev_ptr == nullptr) return cudaSuccess;  // cudaFree(0): the context, nothing else
  using MemFree = CUresult (*)(CUdeviceptr);
  static const auto mem_free = driver_function<MemFree>("cuMemFree", 3020);
  return recorded(runtime_error(mem_free(reinterpret_cast<CUdeviceptr>(dev_ptr))));
}

cudaError_t CUDARTAPI cudaGetLastError() {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

}  // extern "C"
