// gpushim's cuGetProcAddress: the driver answers first, then the answer is swapped for gpushim's own
// function where the one table (driver_substitutions.cpp) says so. The CUDA runtime (static or shared)
// resolves every entry point through this function once it has it (docs/measured-facts.md), so this is where
// cudaMalloc & co. are caught.
#include <atomic>

#include "driver/real_driver.h"
#include "shim/driver_entry_points.h"
#include "shim/driver_substitutions.h"

namespace {

using ProcAddressV1 = CUresult(CUDAAPI*)(const char*, void**, int, cuuint64_t);

// The v1 entry point (CUDA 11.3) differs from v2 in its error codes (it reports an insufficient
// version as an error, v2 as a status), so it is forwarded to the driver's own v1.
ProcAddressV1 real_proc_address_v1() noexcept {
  static std::atomic<ProcAddressV1> cached{nullptr};
  ProcAddressV1 function = cached.load(std::memory_order_acquire);
  if (function == nullptr) {
    void* libcuda = gpushim::libcuda_handle();
    if (libcuda == nullptr) return nullptr;
    function = reinterpret_cast<ProcAddressV1>(gpushim::real_dlsym(libcuda, "cuGetProcAddress"));
    cached.store(function, std::memory_order_release);
  }
  return function;
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuGetProcAddress_v2(const char* symbol, void** pfn, int cuda_version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult* status) {
  const gpushim::RealDriver& driver = gpushim::real_driver();
  if (!driver.loaded) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuGetProcAddress(symbol, pfn, cuda_version, flags, status);
  if (result == CUDA_SUCCESS && pfn != nullptr) {
    *pfn = gpushim::shim::substitute_for_proc_address(symbol, cuda_version, flags, *pfn);
  }
  return result;
}

CUresult CUDAAPI gpushim_cuGetProcAddress_v1(const char* symbol, void** pfn, int cuda_version, cuuint64_t flags) {
  if (!gpushim::real_driver().loaded) return CUDA_ERROR_NOT_INITIALIZED;
  const ProcAddressV1 real = real_proc_address_v1();
  if (real == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = real(symbol, pfn, cuda_version, flags);
  if (result == CUDA_SUCCESS && pfn != nullptr) {
    *pfn = gpushim::shim::substitute_for_proc_address(symbol, cuda_version, flags, *pfn);
  }
  return result;
}

}  // extern "C"
