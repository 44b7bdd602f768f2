#include "tracing/stack_unwinder.h"

#include <dlfcn.h>
#include <execinfo.h>

#include <atomic>

#include "config/settings.h"

namespace gpushim::tracing {
namespace {

// libunwind's exported `unw_backtrace(void** buffer, int size)` (libunwind.h declares it through a
// macro; the .so exports the plain name). Declared here so no libunwind header is needed to build.
using UnwBacktrace = int (*)(void** buffer, int size);
std::atomic<UnwBacktrace> g_unw_backtrace{nullptr};

constexpr int kMaxSkip = 8;

// Where libunwind is absent (the GPU machine, a bare container), glibc's backtrace(), which walks the
// same DWARF unwind tables through libgcc_s: slower per stack, but stacks are only taken when asked.
// Its first call loads libgcc_s and allocates, so load_unwinder() (cold) makes that call, never a
// recording inside an allocation.
int glibc_backtrace(void** buffer, int size) { return backtrace(buffer, size); }

}  // namespace

bool load_unwinder() noexcept {
  if (g_unw_backtrace.load(std::memory_order_acquire)) return true;
  void* handle = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL);
  if (!handle) handle = dlopen("libunwind.so", RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    void* warm_up[4];
    if (backtrace(warm_up, 4) <= 0) return false;
    g_unw_backtrace.store(&glibc_backtrace, std::memory_order_release);
    return true;
  }
  auto fn = reinterpret_cast<UnwBacktrace>(dlsym(handle, "unw_backtrace"));
  if (!fn) return false;  // the handle stays open: harmless, and dlclose in a preload is a risk
  g_unw_backtrace.store(fn, std::memory_order_release);
  return true;
}

int capture_stack(std::uint64_t* frames, int max_frames, int skip) noexcept {
  UnwBacktrace fn = g_unw_backtrace.load(std::memory_order_acquire);
  if (!fn || max_frames <= 0) return 0;
  if (max_frames > kMaxTraceStack) max_frames = kMaxTraceStack;  // the raw buffer below is sized by it
  if (skip < 0 || skip > kMaxSkip) skip = 0;
  void* raw[kMaxTraceStack + 1 + kMaxSkip];
  // +1: the first frame is capture_stack itself, which tells a reader nothing.
  int drop = 1 + skip;
  int n = fn(raw, max_frames + drop);
  if (n <= drop) return 0;
  for (int i = drop; i < n; ++i) frames[i - drop] = reinterpret_cast<std::uintptr_t>(raw[i]);
  return n - drop;
}

}  // namespace gpushim::tracing
