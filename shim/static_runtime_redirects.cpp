// cudaMalloc, cudaFree, cudaMallocAsync and cudaFreeAsync of a CUDA runtime linked into the program
// statically (nvcc's default), served without entering the runtime as shim/runtime_serving.h says.
//
// Why: such a program calls the runtime's functions directly, bound when it was linked, so gpushim's
// exports of the same names are never reached and every call ran the runtime's own ~50 ns before
// reaching gpushim's cuMemAlloc (docs/perf-notes.md, thirtieth session: one thread's pair 101-188 ns
// against 56-97 ns through a shared runtime). gpushim finds the functions in the program's symbol table
// (shim/program_symbols.h) and redirects each to its own (shim/function_redirect.h); what it leaves to
// the runtime runs the runtime's original code through the redirect's trampoline.
//
// What is redirected, and when: in gpushim's library constructor, which runs before the program's own
// constructors and main, so no other thread can be inside these functions. Where gpushim is loaded
// later (dlopen) into a process that already runs other threads, nothing is redirected: one of them could
// be running an entry while it is rewritten. Only the program's own
// runtime: a library loaded with its own static runtime keeps reaching gpushim through the driver entry
// points. A program that defines these names without the runtime (a test double, a wrapper) is left
// alone: the runtime's __cudaRegisterFatBinary, which every static runtime carries, must be there too.
// A stripped program, or one whose functions start with code the trampoline cannot move, keeps
// reaching gpushim through cuMemAlloc as before.
//
// The constructor reads no setting: a program may set GPUSHIM_* variables before its first CUDA call,
// and the settings are read then. So GPUSHIM_DIRECT_CUDART=0 is honoured at each call: the redirected
// function passes straight to the runtime's code.
#include <cuda_runtime_api.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "shim/function_redirect.h"
#include "shim/program_symbols.h"
#include "shim/runtime_serving.h"

namespace gpushim::shim {
namespace {

// The runtime's original function: its redirect's trampoline, set before the function is redirected
// (so never null when reached).
template <typename Function>
struct StaticRuntimeFunction {
  Function original = nullptr;
  template <typename... Args>
  cudaError_t operator()(Args... args) const noexcept {
    return original(args...);
  }
};

StaticRuntimeFunction<cudaError_t (*)(void**, size_t)> static_malloc;
StaticRuntimeFunction<cudaError_t (*)(void*)> static_free;
StaticRuntimeFunction<cudaError_t (*)(void**, size_t, cudaStream_t)> static_malloc_async;
StaticRuntimeFunction<cudaError_t (*)(void**, size_t, cudaStream_t)> static_malloc_async_ptsz;
StaticRuntimeFunction<cudaError_t (*)(void*, cudaStream_t)> static_free_async;
StaticRuntimeFunction<cudaError_t (*)(void*, cudaStream_t)> static_free_async_ptsz;

cudaError_t served_malloc(void** dev_ptr, size_t size) { return serve_malloc(static_malloc, dev_ptr, size); }
cudaError_t served_free(void* dev_ptr) { return serve_free(static_free, dev_ptr); }
cudaError_t served_malloc_async(void** dev_ptr, size_t size, cudaStream_t stream) {
  return serve_malloc_async(static_malloc_async, dev_ptr, size, stream, stream);
}
cudaError_t served_malloc_async_ptsz(void** dev_ptr, size_t size, cudaStream_t stream) {
  return serve_malloc_async(static_malloc_async_ptsz, dev_ptr, size, stream, per_thread_stream(stream));
}
cudaError_t served_free_async(void* dev_ptr, cudaStream_t stream) {
  return serve_free_async(static_free_async, dev_ptr, stream, stream);
}
cudaError_t served_free_async_ptsz(void* dev_ptr, cudaStream_t stream) {
  return serve_free_async(static_free_async_ptsz, dev_ptr, stream, per_thread_stream(stream));
}

template <typename Function>
void** slot(StaticRuntimeFunction<Function>& function) {
  return reinterpret_cast<void**>(&function.original);
}

// True when the process runs this thread alone (/proc/self/stat's num_threads, the 20th field, after the
// command name in parentheses, which may itself hold spaces and parentheses).
bool only_thread_running() {
  const int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char text[1024];
  const ssize_t n = ::read(fd, text, sizeof text - 1);
  ::close(fd);
  if (n <= 0) return false;
  text[n] = '\0';
  const char* field = std::strrchr(text, ')');
  // After ")": state is field 3, so num_threads is 17 fields on.
  for (int skipped = 0; field != nullptr && skipped < 18; ++skipped) field = std::strchr(field + 1, ' ');
  return field != nullptr && std::strtol(field + 1, nullptr, 10) == 1;
}

__attribute__((constructor)) void redirect_static_runtime() {
  if (!only_thread_running()) return;
  ProgramFunction functions[] = {
      {"cudaMalloc"},    {"cudaFree"},           {"cudaMallocAsync"}, {"cudaMallocAsync_ptsz"},
      {"cudaFreeAsync"}, {"cudaFreeAsync_ptsz"}, {"__cudaRegisterFatBinary"}};
  constexpr std::size_t kRedirected = 6;  // the last is the runtime's mark, not redirected
  find_program_functions(functions, sizeof functions / sizeof functions[0]);
  if (functions[kRedirected].address == nullptr) return;  // no static runtime in the program
  void* const replacements[kRedirected] = {
      reinterpret_cast<void*>(&served_malloc),       reinterpret_cast<void*>(&served_free),
      reinterpret_cast<void*>(&served_malloc_async), reinterpret_cast<void*>(&served_malloc_async_ptsz),
      reinterpret_cast<void*>(&served_free_async),   reinterpret_cast<void*>(&served_free_async_ptsz)};
  void** const originals[kRedirected] = {slot(static_malloc),       slot(static_free),
                                         slot(static_malloc_async), slot(static_malloc_async_ptsz),
                                         slot(static_free_async),   slot(static_free_async_ptsz)};
  FunctionRedirect redirects[kRedirected];
  for (std::size_t i = 0; i < kRedirected; ++i) {
    redirects[i] = {functions[i].address, functions[i].size, replacements[i], originals[i]};
  }
  const std::size_t redirected = redirect_functions(redirects, kRedirected);
  g_static_runtime_redirects.store(static_cast<int>(redirected), std::memory_order_relaxed);
}

}  // namespace
}  // namespace gpushim::shim
