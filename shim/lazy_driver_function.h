// The driver's own function behind an entry point gpushim exports, looked up in libcuda on first use and
// kept in `slot` (shim/work_submission_hooks.cpp, shim/synchronize_hooks.cpp). Not the RealDriver table:
// these entry points are outside it, and a lookup by exact symbol keeps each variant's prototype.
#pragma once

#include <atomic>

#include "driver/real_driver.h"

namespace gpushim::shim {

template <typename Function>
Function lazy_driver_function(std::atomic<Function>& slot, const char* symbol) noexcept {
  Function function = slot.load(std::memory_order_acquire);
  if (function == nullptr) {
    void* libcuda = libcuda_handle();
    if (libcuda == nullptr) return nullptr;
    function = reinterpret_cast<Function>(real_dlsym(libcuda, symbol));
    slot.store(function, std::memory_order_release);  // racing threads store the same value
  }
  return function;
}

}  // namespace gpushim::shim

// The start of an exported hook's body: `function`, the driver's own `symbol` of parameter list `params`,
// looked up on first use; CUDA_ERROR_NOT_INITIALIZED from the hook where libcuda has none.
#define GPUSHIM_DRIVER_OWN_FUNCTION(function, symbol, params)                      \
  using Function = CUresult(CUDAAPI*) params;                                      \
  static std::atomic<Function> real{nullptr};                                      \
  const Function function = gpushim::shim::lazy_driver_function(real, #symbol);   \
  if (function == nullptr) return CUDA_ERROR_NOT_INITIALIZED
