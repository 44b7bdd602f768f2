// cudaMalloc, cudaFree, cudaMallocAsync and cudaFreeAsync of a shared CUDA runtime, served by gpushim
// without entering the runtime (shim/runtime_entry_points.cpp). This program links a fake
// libcudart.so.13 (tests/fake_driver/fake_libcudart.cpp, which counts how often it is entered) over the
// fake driver. Built as shim_direct_static_runtime_test it links the same fake runtime statically, whose
// functions gpushim redirects (shim/static_runtime_redirects.cpp); built once more without the static
// runtime's mark, it must be left alone. It runs with LD_PRELOAD=libgpushim.so on the tiered backend
// (tests/shim.cmake): once as configured by default, once with GPUSHIM_DIRECT_CUDART=0, where every call must enter the runtime,
// once more with GPUSHIM_FAIL for the failed allocation, and on the mempool backend, whose driver calls
// show the stream each allocation was served on.
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
CUstream fake_cuda_last_stream();
// The runtime's per-thread-default-stream forms, which cuda_runtime_api.h declares only for programs
// built with --default-stream per-thread (there under the plain names).
cudaError_t CUDARTAPI cudaMallocAsync_ptsz(void** dev_ptr, size_t size, cudaStream_t stream);
cudaError_t CUDARTAPI cudaFreeAsync_ptsz(void* dev_ptr, cudaStream_t stream);
}

namespace {

constexpr std::size_t kBlock = 4096;

// SHIM_TEST_NOT_REDIRECTED (tests/shim.cmake): the program defines the runtime's names without its mark,
// so gpushim must leave every call to them.
bool served_directly() {
  const char* setting = std::getenv("GPUSHIM_DIRECT_CUDART");
  if (std::getenv("SHIM_TEST_NOT_REDIRECTED") != nullptr) return false;
  return setting == nullptr || std::string(setting) != "0";
}

bool on_backend(const char* name) {
  const char* backend = std::getenv("GPUSHIM_BACKEND");
  return backend != nullptr && std::string(backend) == name;
}

// How often each runtime function was entered since construction.
struct RuntimeEntries {
  static constexpr const char* kNames[] = {"cudaMalloc",           "cudaFree",      "cudaMallocAsync",
                                           "cudaMallocAsync_ptsz", "cudaFreeAsync", "cudaFreeAsync_ptsz"};
  int before[6] = {};
  RuntimeEntries() {
    for (int i = 0; i < 6; ++i) before[i] = fake_cudart_calls(kNames[i]);
  }
  int of(const char* name) const {
    for (int i = 0; i < 6; ++i)
      if (std::strcmp(kNames[i], name) == 0) return fake_cudart_calls(name) - before[i];
    return -1;
  }
  int mallocs() const { return of("cudaMalloc"); }
  int frees() const { return of("cudaFree"); }
  int async_calls() const {
    return of("cudaMallocAsync") + of("cudaMallocAsync_ptsz") + of("cudaFreeAsync") + of("cudaFreeAsync_ptsz");
  }
};

// A non-blocking stream made through the driver entry point (gpushim's, under the preload).
struct Stream {
  CUstream handle = nullptr;
  Stream() { EXPECT_EQ(cuStreamCreate(&handle, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS); }
  ~Stream() { cuStreamDestroy(handle); }
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

// Each stream-ordered form, on a stream, the legacy stream and the per-thread stream: served without the
// runtime, and the blocks are really there.
TEST_F(DirectRuntime, StreamOrderedPairsAreServedWithoutTheRuntime) {
  const Stream stream;
  const RuntimeEntries entries;
  const int driver_allocations = fake_cuda_calls("cuMemAllocAsync") + fake_cuda_calls("cuMemAllocAsync_ptsz");
  int pairs = 0;
  for (cudaStream_t s : {static_cast<cudaStream_t>(stream.handle), cudaStream_t{nullptr}, cudaStreamPerThread}) {
    for (int i = 0; i < 20; ++i, ++pairs) {
      void* p = nullptr;
      ASSERT_EQ(cudaMallocAsync(&p, kBlock, s), cudaSuccess);
      ASSERT_NE(p, nullptr);
      std::memset(p, i, kBlock);
      ASSERT_EQ(cudaFreeAsync(p, s), cudaSuccess);
      void* q = nullptr;
      ASSERT_EQ(cudaMallocAsync_ptsz(&q, kBlock, s == cudaStreamPerThread ? nullptr : s), cudaSuccess);
      ASSERT_NE(q, nullptr);
      std::memset(q, i, kBlock);
      ASSERT_EQ(cudaFreeAsync_ptsz(q, s == cudaStreamPerThread ? nullptr : s), cudaSuccess);
    }
  }
  EXPECT_EQ(entries.async_calls(), served_directly() ? 0 : 4 * pairs);
  EXPECT_EQ(entries.of("cudaMallocAsync_ptsz"), served_directly() ? 0 : pairs);
  EXPECT_EQ(fake_cuda_calls("cuMemAllocAsync") + fake_cuda_calls("cuMemAllocAsync_ptsz"), driver_allocations)
      << "the backend serves them: the driver's pool is not asked";
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// The stream a stream-ordered allocation is served on is the one the runtime would have passed: in the
// _ptsz form stream 0 is the calling thread's stream. The mempool backend hands it to the driver's pool
// (cuMemAllocFromPoolAsync), where the fake driver shows it.
TEST_F(DirectRuntime, TheStreamReachesTheBackendAsTheRuntimeWouldPassIt) {
  if (!on_backend("mempool")) GTEST_SKIP() << "run by tests/shim.cmake with GPUSHIM_BACKEND=mempool";
  const Stream stream;
  void* p = nullptr;
  ASSERT_EQ(cudaMallocAsync(&p, kBlock, stream.handle), cudaSuccess);
  EXPECT_EQ(fake_cuda_last_stream(), stream.handle);
  ASSERT_EQ(cudaFreeAsync(p, stream.handle), cudaSuccess);
  ASSERT_EQ(cudaMallocAsync_ptsz(&p, kBlock, nullptr), cudaSuccess);
  EXPECT_EQ(fake_cuda_last_stream(), CU_STREAM_PER_THREAD);
  ASSERT_EQ(cudaFreeAsync_ptsz(p, nullptr), cudaSuccess);
  ASSERT_EQ(cudaMallocAsync(&p, kBlock, nullptr), cudaSuccess);
  EXPECT_NE(fake_cuda_last_stream(), CU_STREAM_PER_THREAD) << "stream 0 of the plain form is the legacy stream";
  ASSERT_EQ(cudaFreeAsync(p, nullptr), cudaSuccess);
}

TEST_F(DirectRuntime, StreamOrderedZeroBytesAndNullPointersGetTheRuntimesAnswer) {
  const Stream stream;
  const RuntimeEntries entries;
  void* p = nullptr;
  cudaMallocAsync(&p, 0, stream.handle);  // whatever the runtime answers: it is asked
  EXPECT_EQ(cudaMallocAsync(nullptr, kBlock, stream.handle), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMallocAsync_ptsz(nullptr, kBlock, nullptr), cudaErrorInvalidValue);
  cudaFreeAsync(nullptr, stream.handle);
  cudaFreeAsync_ptsz(nullptr, nullptr);
  cudaGetLastError();
  EXPECT_EQ(entries.of("cudaMallocAsync"), 2);
  EXPECT_EQ(entries.of("cudaMallocAsync_ptsz"), 1);
  EXPECT_EQ(entries.of("cudaFreeAsync"), 1);
  EXPECT_EQ(entries.of("cudaFreeAsync_ptsz"), 1);
}

// A refused stream-ordered free is the runtime's error, recorded for cudaGetLastError, and leaves the
// block live.
TEST_F(DirectRuntime, InvalidAndDoubleStreamOrderedFreesAreTheRuntimesErrors) {
  const Stream stream;
  void* p = nullptr;
  ASSERT_EQ(cudaMallocAsync(&p, kBlock, stream.handle), cudaSuccess);
  const RuntimeEntries entries;
  EXPECT_EQ(cudaFreeAsync(static_cast<char*>(p) + 256, stream.handle), cudaErrorInvalidValue);  // interior
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync_ptsz(static_cast<char*>(p) + 256, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFreeAsync(p, stream.handle), cudaSuccess) << "the block must still be live";
  EXPECT_EQ(cudaFreeAsync(p, stream.handle), cudaErrorInvalidValue);  // double free
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  // Each error passes through the runtime once; the good free only where every call does.
  EXPECT_EQ(entries.of("cudaFreeAsync"), served_directly() ? 2 : 3);
  EXPECT_EQ(entries.of("cudaFreeAsync_ptsz"), 1);
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

// The same for a stream-ordered allocation (its own run under GPUSHIM_FAIL=nth=3).
TEST_F(DirectRuntime, ARefusedStreamOrderedAllocationIsTheRuntimesErrorAndTriedOnce) {
  const char* fail = std::getenv("GPUSHIM_FAIL");
  if (fail == nullptr || std::string(fail) != "nth=3") GTEST_SKIP() << "run by tests/shim.cmake with GPUSHIM_FAIL=nth=3";
  const Stream stream;
  void* second = nullptr;
  ASSERT_EQ(cudaMallocAsync(&second, kBlock, stream.handle), cudaSuccess);
  const RuntimeEntries entries;
  void* third = nullptr;
  EXPECT_EQ(cudaMallocAsync(&third, kBlock, stream.handle), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  EXPECT_EQ(entries.of("cudaMallocAsync"), 1);
  void* fourth = nullptr;
  EXPECT_EQ(cudaMallocAsync(&fourth, kBlock, stream.handle), cudaSuccess);
  EXPECT_EQ(entries.of("cudaMallocAsync"), served_directly() ? 1 : 2);
  EXPECT_EQ(cudaFreeAsync(second, stream.handle), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(fourth, stream.handle), cudaSuccess);
}

}  // namespace
