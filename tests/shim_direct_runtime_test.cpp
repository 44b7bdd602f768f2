// cudaMalloc and cudaFree of a shared CUDA runtime, served by gpushim without entering the runtime
// (shim/runtime_entry_points.cpp). This program links a fake libcudart.so.13
// (tests/fake_driver/fake_libcudart.cpp, which counts how often it is entered) over the fake driver, and
// runs with LD_PRELOAD=libgpushim.so on the tiered backend (tests/shim.cmake): once as configured by
// default, once with GPUSHIM_DIRECT_CUDART=0, where every call must enter the runtime, and once more
// with GPUSHIM_FAIL for the failed allocation.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

extern "C" {
int fake_cudart_calls(const char* name);
int fake_cuda_calls(const char* symbol);
}

namespace {

constexpr std::size_t kBlock = 4096;

bool served_directly() {
  const char* setting = std::getenv("GPUSHIM_DIRECT_CUDART");
  return setting == nullptr || std::string(setting) != "0";
}

// How often each runtime function was entered since construction.
struct RuntimeEntries {
  int malloc_before = fake_cudart_calls("cudaMalloc");
  int free_before = fake_cudart_calls("cudaFree");
  int mallocs() const { return fake_cudart_calls("cudaMalloc") - malloc_before; }
  int frees() const { return fake_cudart_calls("cudaFree") - free_before; }
};

class DirectRuntime : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("LD_PRELOAD"), nullptr) << "run through ctest: it preloads libgpushim.so";
    ASSERT_GE(fake_cudart_calls("cudaMalloc"), 0) << "the fake runtime is not the one linked";
    // The first call of the process may start things (the runtime's context on this thread): not timed here.
    void* warm = nullptr;
    ASSERT_EQ(cudaMalloc(&warm, kBlock), cudaSuccess);
    ASSERT_EQ(cudaFree(warm), cudaSuccess);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  }
};

TEST_F(DirectRuntime, PairsWithAContextAreServedWithoutTheRuntime) {
  const RuntimeEntries entries;
  const int driver_allocations = fake_cuda_calls("cuMemAlloc_v2");
  for (int i = 0; i < 100; ++i) {
    void* p = nullptr;
    ASSERT_EQ(cudaMalloc(&p, kBlock), cudaSuccess);
    ASSERT_NE(p, nullptr);
    std::memset(p, i, kBlock);  // the fake driver's memory is host memory: the block is really there
    ASSERT_EQ(cudaFree(p), cudaSuccess);
  }
  const int expected = served_directly() ? 0 : 100;
  EXPECT_EQ(entries.mallocs(), expected);
  EXPECT_EQ(entries.frees(), expected);
  EXPECT_EQ(fake_cuda_calls("cuMemAlloc_v2"), driver_allocations) << "tiered carves: no cuMemAlloc of the driver";
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST_F(DirectRuntime, AThreadWithoutAContextGetsItFromTheRuntime) {
  std::thread([] {
    ASSERT_EQ(cuCtxSetCurrent(nullptr), CUDA_SUCCESS);  // this thread has no current context
    const RuntimeEntries entries;
    void* first = nullptr;
    ASSERT_EQ(cudaMalloc(&first, kBlock), cudaSuccess);
    EXPECT_EQ(entries.mallocs(), 1) << "only the runtime makes a context current";
    CUcontext context = nullptr;
    ASSERT_EQ(cuCtxGetCurrent(&context), CUDA_SUCCESS);
    EXPECT_NE(context, nullptr);
    void* second = nullptr;
    ASSERT_EQ(cudaMalloc(&second, kBlock), cudaSuccess);
    EXPECT_EQ(entries.mallocs(), served_directly() ? 1 : 2);
    EXPECT_EQ(cudaFree(first), cudaSuccess);
    EXPECT_EQ(cudaFree(second), cudaSuccess);
    EXPECT_EQ(entries.frees(), served_directly() ? 0 : 2);
  }).join();
}

TEST_F(DirectRuntime, ZeroBytesAndNullPointersGetTheRuntimesAnswer) {
  const RuntimeEntries entries;
  void* p = reinterpret_cast<void*>(0x1);
  EXPECT_EQ(cudaMalloc(&p, 0), cudaSuccess);  // the runtime's answer; cuMemAlloc of 0 bytes is an error
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(cudaMalloc(nullptr, kBlock), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(nullptr), cudaSuccess);
  EXPECT_EQ(entries.mallocs(), 2);
  EXPECT_EQ(entries.frees(), 1);
}

// A refused free is the runtime's error, recorded for cudaGetLastError, and leaves the block live.
TEST_F(DirectRuntime, InvalidAndDoubleFreesAreTheRuntimesErrors) {
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, kBlock), cudaSuccess);
  const RuntimeEntries entries;
  EXPECT_EQ(cudaFree(static_cast<char*>(p) + 256), cudaErrorInvalidValue);  // interior pointer
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaSuccess) << "the block must still be live";
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);  // double free
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  // Each error passes through the runtime once; the good free only where every call does.
  EXPECT_EQ(entries.frees(), served_directly() ? 2 : 3);
}

// GPUSHIM_FAIL=nth=3 (tests/shim.cmake): the third allocation fails. The runtime reports it, and the
// allocation is tried once: a second attempt would be the fourth allocation and succeed.
TEST_F(DirectRuntime, AFailedAllocationIsTheRuntimesErrorAndTriedOnce) {
  const char* fail = std::getenv("GPUSHIM_FAIL");
  if (fail == nullptr || std::string(fail) != "nth=3") GTEST_SKIP() << "run by tests/shim.cmake with GPUSHIM_FAIL=nth=3";
  // SetUp's allocation was the first.
  void* second = nullptr;
  ASSERT_EQ(cudaMalloc(&second, kBlock), cudaSuccess);
  const RuntimeEntries entries;
  void* third = nullptr;
  EXPECT_EQ(cudaMalloc(&third, kBlock), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  EXPECT_EQ(entries.mallocs(), 1);
  void* fourth = nullptr;
  EXPECT_EQ(cudaMalloc(&fourth, kBlock), cudaSuccess);
  EXPECT_EQ(entries.mallocs(), served_directly() ? 1 : 2);
  EXPECT_EQ(cudaFree(second), cudaSuccess);
  EXPECT_EQ(cudaFree(fourth), cudaSuccess);
}

}  // namespace
