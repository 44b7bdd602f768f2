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
// Frames of the unwinder itself before the caller's: capture_stack, a wrapper, an interceptor.
constexpr int kMaxOwnFrames = 4;

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

// Not inlined: __builtin_return_address(0) below must be the return address into our caller.
__attribute__((noinline)) int capture_stack(std::uint64_t* frames, int max_frames, int skip) noexcept {
  UnwBacktrace fn = g_unw_backtrace.load(std::memory_order_acquire);
  if (!fn || max_frames <= 0) return 0;
  if (max_frames > kMaxTraceStack) max_frames = kMaxTraceStack;  // the raw buffer below is sized by it
  if (skip < 0 || skip > kMaxSkip) skip = 0;
  void* raw[kMaxTraceStack + kMaxOwnFrames + kMaxSkip];
  // The unwinder's own frames come first, and how many depends on the build: optimized builds make
  // glibc_backtrace a tail call, sanitizer builds wrap backtrace() in an interceptor. So the stack starts
  // at the frame that returns into our caller, found by that return address; by count (capture_stack's
  // own frame only) where it is not among the first frames.
  void* const caller = __builtin_return_address(0);
  const int n = fn(raw, max_frames + kMaxOwnFrames + skip);
  int first = 1;
  for (int i = 0; i < n && i < kMaxOwnFrames; ++i) {
    if (raw[i] == caller) {
      first = i;
      break;
    }
  }
  first += skip;
  if (n <= first) return 0;
  const int count = n - first < max_frames ? n - first : max_frames;
  for (int i = 0; i < count; ++i) frames[i] = reinterpret_cast<std::uintptr_t>(raw[first + i]);
  return count;
}

}  // namespace gpushim::tracing
