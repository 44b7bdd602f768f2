// Bootstrap of the real driver table (driver/real_driver.h).
//
// Order, and why:
//  1. glibc's dlsym comes from dlvsym(RTLD_NEXT, "dlsym", <version>). gpushim exports its own `dlsym`
//     (shim/dlsym_hook.cpp), so a plain call to dlsym would land in our hook; dlvsym is not hooked.
//     This needs nothing else, so the hook itself can use it before anything is initialised.
//  2. dlopen("libcuda.so.1"), as the CUDA runtime does. RTLD_LOCAL: we add nothing to the global
//     scope, so a program's own lookups still find gpushim's exports first.
//  3. Every function of driver_functions.inc by the exact symbol name cuda.h declares for it
//     (cuMemAlloc -> "cuMemAlloc_v2", cuCtxSynchronize -> "cuCtxSynchronize"), through the real dlsym
//     on libcuda's own handle, which never searches gpushim. The exported symbol of that name is, by
//     construction, the prototype our table is typed with (decltype(&::name)).
//     Asking cuGetProcAddress for the base name at CUDA_VERSION would NOT be: on CUDA 13 it answers
//     "cuCtxSynchronize" with cuCtxSynchronize_v2(CUcontext), "cuCtxGetDevice" with
//     cuCtxGetDevice_v2(CUdevice*, CUcontext) and "cuStreamGetCtx" with the 3-argument
//     cuStreamGetCtx_v2 (cudaTypedefs.h: PFN_*_v13000 / _v12050), so a call through the table would
//     pass garbage arguments to the driver.
//  4. Publish with a release store; readers take one acquire load from then on.
//
// Re-entrance: dlopen runs libcuda's constructors, which may look symbols up through our dlsym hook.
// The hook never needs this table, but if anything on the bootstrapping thread asks for it while the
// bootstrap runs, it gets the empty table (loaded = false) instead of deadlocking on our own lock.
#include "driver/real_driver.h"

#include <dlfcn.h>
#include <pthread.h>

#include <atomic>

#include "diagnostics/log.h"

namespace gpushim {
namespace {



// Constant-initialised (no constructor runs), so usable from the first dlsym call of the process.
std::atomic<DlsymFunction> glibc_dlsym{nullptr};

DlsymFunction find_glibc_dlsym() noexcept {
  // glibc 2.34 moved dlsym into libc.so.6 as dlsym@@GLIBC_2.34; older ones have only GLIBC_2.2.5.
  void* found = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
  if (found == nullptr) found = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
  return reinterpret_cast<DlsymFunction>(found);
}

// The table and its state are constant-initialised too: real_driver() may run before our
// constructors (from another library's constructor) or after the program's static destructors.
RealDriver& table = real_driver_detail::g_table;
std::atomic<bool>& table_ready = real_driver_detail::g_table_ready;
const RealDriver empty_table;
void* libcuda = nullptr;
pthread_mutex_t bootstrap_mutex = PTHREAD_MUTEX_INITIALIZER;
// initial-exec: a plain TLS access, no __tls_get_addr (which may allocate) inside the bootstrap.
thread_local bool bootstrapping_on_this_thread __attribute__((tls_model("initial-exec"))) = false;

#define GPUSHIM_EXPANDED_NAME(name) GPUSHIM_STRINGIFY(name)
#define GPUSHIM_STRINGIFY(name) #name

void bootstrap(RealDriver& driver) noexcept {
  libcuda = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (libcuda == nullptr) {
    log(LogLevel::debug, "libcuda.so.1 not found: no CUDA driver, every call passes through");
    return;
  }
  // One name is looked up by its macro-expanded form on purpose (step 3 of the comment above).
#define GPUSHIM_DRIVER_FN(name) \
  driver.name = reinterpret_cast<decltype(driver.name)>(real_dlsym(libcuda, GPUSHIM_EXPANDED_NAME(name)));
#include "driver/driver_functions.inc"
#undef GPUSHIM_DRIVER_FN
  // cuGetProcAddress_v2 exists from driver 12.0 on; without it the runtime could not use this driver
  // either, and gpushim's cuGetProcAddress has nothing to forward to.
  driver.loaded = driver.cuGetProcAddress != nullptr;
  if (!driver.loaded) log(LogLevel::warn, "libcuda.so.1 has no cuGetProcAddress_v2 (driver older than 12.0)");
}

}  // namespace

DlsymFunction glibc_dlsym_function() noexcept {
  DlsymFunction function = glibc_dlsym.load(std::memory_order_acquire);
  if (function == nullptr) {
    function = find_glibc_dlsym();  // idempotent: racing threads store the same value
    if (function == nullptr) return nullptr;
    glibc_dlsym.store(function, std::memory_order_release);
  }
  return function;
}

void* real_dlsym(void* handle, const char* symbol) noexcept {
  DlsymFunction function = glibc_dlsym_function();
  return function ? function(handle, symbol) : nullptr;
}

RealDriver real_driver_detail::g_table;
std::atomic<bool> real_driver_detail::g_table_ready{false};

const RealDriver& real_driver_detail::resolve() noexcept {
  if (table_ready.load(std::memory_order_acquire)) return table;
  if (bootstrapping_on_this_thread) return empty_table;
  pthread_mutex_lock(&bootstrap_mutex);
  if (!table_ready.load(std::memory_order_relaxed)) {
    bootstrapping_on_this_thread = true;
    bootstrap(table);
    bootstrapping_on_this_thread = false;
    table_ready.store(true, std::memory_order_release);
  }
  pthread_mutex_unlock(&bootstrap_mutex);
  return table;
}

void* libcuda_handle() noexcept {
  real_driver();
  return libcuda;
}

}  // namespace gpushim
