// The context synchronizations (shim/synchronize_entries.inc): the driver's own call, then the router's
// idle checks. The router otherwise runs them every 4,096 frees of a thread, so a program that stopped
// freeing (PyTorch after torch.cuda.empty_cache(), whose caching allocator frees little else) kept idle
// memory above GPUSHIM_VMM_RELEASE_THRESHOLD, and blocks parked on quiet streams' lists, for as long as
// it ran.
#include <atomic>

#include <cuda.h>

#include "router/router.h"
#include "shim/lazy_driver_function.h"

#define GPUSHIM_EXPORT __attribute__((visibility("default")))

#define GPUSHIM_SYNCHRONIZE_ENTRY(name, version, symbol, params, args, context)          \
  extern "C" GPUSHIM_EXPORT CUresult CUDAAPI symbol params;                               \
  extern "C" CUresult CUDAAPI symbol params {                                             \
    GPUSHIM_DRIVER_OWN_FUNCTION(function, symbol, params);                                \
    const CUresult result = function args;                                                \
    if (result == CUDA_SUCCESS) gpushim::router::after_context_synchronize(context);      \
    return result;                                                                        \
  }
#include "shim/synchronize_entries.inc"
#undef GPUSHIM_SYNCHRONIZE_ENTRY
