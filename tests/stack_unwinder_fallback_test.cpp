// Stacks where libunwind is absent (the GPU machine): tracing/stack_unwinder.cpp falls back to glibc's
// backtrace(). This program hides libunwind by defining dlopen itself (the static tracing library's
// dlopen calls resolve to it), so the fallback is tested on a machine that has libunwind too.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "tracing/stack_unwinder.h"

static int g_unwind_dlopens = 0;

extern "C" void* dlopen(const char* file, int mode) {
  if (file && std::strstr(file, "libunwind")) {
    ++g_unwind_dlopens;
    return nullptr;
  }
  using Real = void* (*)(const char*, int);
  static Real real = reinterpret_cast<Real>(dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.34"));
  if (!real) real = reinterpret_cast<Real>(dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.2.5"));
  return real ? real(file, mode) : nullptr;
}

// Exported (extern "C", -rdynamic) so dladdr can name it.
extern "C" __attribute__((noinline)) int capture_here(std::uint64_t* frames, int max) {
  const int n = gpushim::tracing::capture_stack(frames, max, 0);
  asm volatile("");  // keep the call above from becoming a tail call
  return n;
}

namespace {

TEST(StackUnwinderFallback, WithoutLibunwindGlibcBacktraceTakesTheStack) {
  ASSERT_TRUE(gpushim::tracing::load_unwinder());
  EXPECT_GE(g_unwind_dlopens, 1) << "libunwind was not even asked for";
  std::uint64_t frames[16] = {};
  const int n = capture_here(frames, 16);
  ASSERT_GT(n, 2);
  // The innermost frame returns into capture_here.
  Dl_info info{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(frames[0]), &info), 0);
  ASSERT_NE(info.dli_sname, nullptr);
  EXPECT_NE(std::strstr(info.dli_sname, "capture_here"), nullptr) << info.dli_sname;
  EXPECT_EQ(capture_here(frames, 2), 2) << "the depth asked for is the most written";
}

}  // namespace
