// gpushim loaded late, with dlopen, into a program with a static runtime (shim/static_runtime_redirects.cpp):
// while another thread runs, the runtime's functions must not be rewritten (that thread could be inside
// one); with this thread alone they are. Each test is its own process (tests/shim.cmake), since a library
// is loaded, and its constructor run, once per process. The program links the fake static runtime
// (tests/fake_driver/fake_static_cudart_entries.S), whose entries start with the real one's prologue.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace {

// The first two bytes of the program's cudaMalloc: push rbp; mov ... (0x55 0x48) as linked, movabs rax
// (0x48 0xB8) once redirected.
bool cuda_malloc_redirected() {
  unsigned char entry[2];
  std::memcpy(entry, reinterpret_cast<const void*>(static_cast<cudaError_t (*)(void**, size_t)>(&cudaMalloc)), 2);
  return entry[0] == 0x48 && entry[1] == 0xB8;
}

void* load_gpushim() {
  const char* library = std::getenv("SHIM_TEST_LIBRARY");
  if (library == nullptr) return nullptr;
  return dlopen(library, RTLD_NOW | RTLD_LOCAL);
}

TEST(StaticRuntimeLateLoad, WhileAnotherThreadRunsNothingIsRewritten) {
  ASSERT_FALSE(cuda_malloc_redirected()) << "run through ctest: the library must not be preloaded";
  std::atomic<bool> stop{false};
  std::thread other([&] {
    while (!stop.load()) std::this_thread::yield();
  });
  void* handle = load_gpushim();
  stop = true;
  other.join();
  ASSERT_NE(handle, nullptr) << dlerror();
  EXPECT_FALSE(cuda_malloc_redirected());
}

TEST(StaticRuntimeLateLoad, WithThisThreadAloneTheRuntimeIsRedirected) {
  ASSERT_FALSE(cuda_malloc_redirected()) << "run through ctest: the library must not be preloaded";
  void* handle = load_gpushim();
  ASSERT_NE(handle, nullptr) << dlerror();
  EXPECT_TRUE(cuda_malloc_redirected()) << "the control: the same load with no other thread redirects";
}

}  // namespace
