// The real CUDA driver functions, resolved once from libcuda.so.1 — never gpushim's own hooks.
//
// Every layer below the shim (router, providers, driver-backed backends) calls the driver only
// through this table. Each pointer is looked up with glibc's real dlsym on libcuda's handle under the
// exact symbol cuda.h's macros name (cuMemAlloc -> "cuMemAlloc_v2"), so it matches the prototype the
// field is declared with. Not through cuGetProcAddress at CUDA_VERSION: on CUDA 13 that returns newer
// versions with other argument lists for some names (cuCtxSynchronize, cuCtxGetDevice, cuStreamGetCtx).
#pragma once

#include <cuda.h>

#include <atomic>

namespace gpushim {

struct RealDriver {
#define GPUSHIM_DRIVER_FN(name) decltype(&::name) name = nullptr;
#include "driver/driver_functions.inc"
#undef GPUSHIM_DRIVER_FN
  bool loaded = false;  // false when libcuda.so.1 could not be opened (no driver on this machine)
};

namespace real_driver_detail {
// Set once the table is resolved; the table never changes after that.
extern RealDriver g_table __attribute__((visibility("hidden")));
extern std::atomic<bool> g_table_ready __attribute__((visibility("hidden")));
const RealDriver& resolve() noexcept __attribute__((visibility("hidden")));
}  // namespace real_driver_detail

// Resolves on first call (thread-safe; never calls back into gpushim). Later calls are one load,
// inline: every request fetched the table several times through an out-of-line call (callgrind of
// bench/router_pair_bench), which the hot path need not pay.
inline const RealDriver& real_driver() noexcept {
  if (__builtin_expect(real_driver_detail::g_table_ready.load(std::memory_order_acquire), 1))
    return real_driver_detail::g_table;
  return real_driver_detail::resolve();
}

// The real dlsym (glibc's), for code that must look up symbols without going through our hook.
void* real_dlsym(void* handle, const char* symbol) noexcept;

// glibc's dlsym itself, for the one caller that must jump to it (shim/dlsym_hook.cpp). nullptr if absent.
using DlsymFunction = void* (*)(void* handle, const char* symbol) noexcept;
DlsymFunction glibc_dlsym_function() noexcept;

// libcuda.so.1's handle, or nullptr.
void* libcuda_handle() noexcept;

}  // namespace gpushim
