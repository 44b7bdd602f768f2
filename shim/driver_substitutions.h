// The one table of driver entry points gpushim serves in place of the driver (driver_substitutions.cpp),
// asked two ways: by cuGetProcAddress (base name, CUDA version, flags) and by dlsym (exact symbol).
#pragma once

#include <cuda.h>

namespace gpushim::shim {

// cuGetProcAddress just answered `symbol` at `cuda_version`/`flags` with the driver's `driver_function`:
// gpushim's function with the same prototype, or `driver_function` itself when gpushim does not serve it.
void* substitute_for_proc_address(const char* symbol, int cuda_version, cuuint64_t flags,
                                  void* driver_function) noexcept;

// gpushim's function exported as exactly `symbol` ("cuMemAlloc_v2", "cuGetProcAddress"), or nullptr.
// Never allocates and calls nothing: it runs inside the dlsym hook.
void* substitute_for_symbol(const char* symbol) noexcept;

}  // namespace gpushim::shim
