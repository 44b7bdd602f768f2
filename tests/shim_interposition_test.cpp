// The interposer in a real process: this program links the fake libcuda.so.1 (as a `-lcuda` program
// does) and runs with LD_PRELOAD=libgpushim.so, GPUSHIM_BACKEND=passthrough (tests/shim.cmake), so every
// lookup and call below goes through gpushim's dlsym / cuGetProcAddress / exported symbols exactly as
// the CUDA runtime's and a driver-API program's would.
#include <cuda.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

extern "C" {
int fake_cuda_calls(const char* symbol);
CUstream fake_cuda_last_stream();
void* fake_cuda_proc_address(const char* symbol, int version, cuuint64_t flags);
void* next_lookup_from_first();
}

namespace {

using ProcAddressV2 = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);
using ProcAddressV1 = CUresult (*)(const char*, void**, int, cuuint64_t);
using MemAlloc = CUresult (*)(CUdeviceptr*, size_t);
using MemFree = CUresult (*)(CUdeviceptr);
using MemAllocAsync = CUresult (*)(CUdeviceptr*, size_t, CUstream);
using MemFreeAsync = CUresult (*)(CUdeviceptr, CUstream);

std::string object_of(const void* address) {
  Dl_info info{};
  if (address == nullptr || dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "<none>";
  return info.dli_fname;
}

bool in_gpushim(const void* address) { return object_of(address).find("libgpushim") != std::string::npos; }

class Interposition : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("LD_PRELOAD"), nullptr) << "run through ctest: it preloads libgpushim.so";
    libcuda_ = dlopen("libcuda.so.1", RTLD_LAZY);  // the runtime's first two steps
    ASSERT_NE(libcuda_, nullptr);
    get_proc_ = reinterpret_cast<ProcAddressV2>(dlsym(libcuda_, "cuGetProcAddress_v2"));
    ASSERT_NE(get_proc_, nullptr);
  }
  void* lookup(const char* name, int version, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
    void* function = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (get_proc_(name, &function, version, flags, &status) != CUDA_SUCCESS) return nullptr;
    EXPECT_EQ(status, CU_GET_PROC_ADDRESS_SUCCESS);
    return function;
  }
  void* libcuda_ = nullptr;
  ProcAddressV2 get_proc_ = nullptr;
};

TEST_F(Interposition, DlsymOnTheDriverHandleGivesGpushimsProcAddress) {
  EXPECT_TRUE(in_gpushim(reinterpret_cast<void*>(get_proc_))) << object_of(reinterpret_cast<void*>(get_proc_));
  EXPECT_NE(reinterpret_cast<void*>(get_proc_), fake_cuda_proc_address("cuGetProcAddress", 12000, 0));
  void* v1 = dlsym(libcuda_, "cuGetProcAddress");
  EXPECT_TRUE(in_gpushim(v1));
  EXPECT_NE(v1, reinterpret_cast<void*>(get_proc_));  // v1 and v2 have different prototypes
}

TEST_F(Interposition, ProcAddressAskedForItselfStaysGpushims) {
  EXPECT_EQ(lookup("cuGetProcAddress", 12000), reinterpret_cast<void*>(get_proc_));
  EXPECT_EQ(lookup("cuGetProcAddress", 13000), reinterpret_cast<void*>(get_proc_));
  void* v1 = lookup("cuGetProcAddress", 11030);
  EXPECT_EQ(v1, dlsym(libcuda_, "cuGetProcAddress"));
  // And v1 substitutes too.
  void* alloc = nullptr;
  ASSERT_EQ(reinterpret_cast<ProcAddressV1>(v1)("cuMemAlloc", &alloc, 3020, 0), CUDA_SUCCESS);
  EXPECT_TRUE(in_gpushim(alloc));
}

TEST_F(Interposition, MemAllocIsGpushimsAndReachesTheDriverThroughPassthrough) {
  void* alloc = lookup("cuMemAlloc", 3020);
  void* free = lookup("cuMemFree", 3020);
  ASSERT_TRUE(in_gpushim(alloc)) << object_of(alloc);
  ASSERT_TRUE(in_gpushim(free)) << object_of(free);
  const int allocs_before = fake_cuda_calls("cuMemAlloc_v2");
  const int frees_before = fake_cuda_calls("cuMemFree_v2");
  CUdeviceptr p = 0;
  ASSERT_EQ(reinterpret_cast<MemAlloc>(alloc)(&p, 1000), CUDA_SUCCESS);
  EXPECT_NE(p, 0u);
  EXPECT_EQ(p % 256, 0u);
  EXPECT_EQ(reinterpret_cast<MemFree>(free)(p), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_calls("cuMemAlloc_v2"), allocs_before + 1);
  EXPECT_EQ(fake_cuda_calls("cuMemFree_v2"), frees_before + 1);
}

TEST_F(Interposition, EveryServedNameIsSubstituted) {
  const struct {
    const char* name;
    int version;
  } served[] = {{"cuMemAllocPitch", 3020},       {"cuMemGetInfo", 3020},         {"cuMemAllocAsync", 11020},
                {"cuMemFreeAsync", 11020},       {"cuStreamCreate", 2000},       {"cuStreamCreateWithPriority", 5050},
                {"cuStreamDestroy", 4000},       {"cuStreamBeginCapture", 10010}, {"cuStreamBeginCaptureToGraph", 12030},
                {"cuStreamEndCapture", 10000},   {"cuCtxSynchronize", 2000},     {"cuCtxSynchronize", 13000}};
  for (const auto& entry : served) {
    for (cuuint64_t flags : {0, 1, 2}) {
      void* function = lookup(entry.name, entry.version, flags);
      EXPECT_TRUE(in_gpushim(function)) << entry.name << " flags " << flags << ": " << object_of(function);
    }
  }
}

TEST_F(Interposition, PerThreadFlagPicksThePerThreadVariant) {
  void* legacy = lookup("cuMemAllocAsync", 11020, CU_GET_PROC_ADDRESS_LEGACY_STREAM);
  void* per_thread = lookup("cuMemAllocAsync", 11020, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  ASSERT_TRUE(in_gpushim(per_thread));
  EXPECT_NE(legacy, per_thread);
  EXPECT_EQ(per_thread, dlsym(libcuda_, "cuMemAllocAsync_ptsz"));

  // Which stream reaches the driver is visible only through the pass-through router stub; the real
  // router may serve the request itself.
  const bool stub_router = std::getenv("SHIM_TEST_ROUTER_STUB") != nullptr;
  CUdeviceptr p = 0;
  ASSERT_EQ(reinterpret_cast<MemAllocAsync>(per_thread)(&p, 512, nullptr), CUDA_SUCCESS);
  if (stub_router) {
    EXPECT_EQ(fake_cuda_last_stream(), CU_STREAM_PER_THREAD);  // 0 meant this thread's stream
  }
  void* free_per_thread = lookup("cuMemFreeAsync", 11020, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  ASSERT_EQ(reinterpret_cast<MemFreeAsync>(free_per_thread)(p, nullptr), CUDA_SUCCESS);
  if (stub_router) {
    EXPECT_EQ(fake_cuda_last_stream(), CU_STREAM_PER_THREAD);
  }

  ASSERT_EQ(reinterpret_cast<MemAllocAsync>(legacy)(&p, 512, nullptr), CUDA_SUCCESS);
  if (stub_router) {
    EXPECT_EQ(fake_cuda_last_stream(), nullptr);  // stream 0 stays the legacy stream
  }
  void* free_legacy = lookup("cuMemFreeAsync", 11020);
  ASSERT_EQ(reinterpret_cast<MemFreeAsync>(free_legacy)(p, nullptr), CUDA_SUCCESS);

  // Capture goes to the driver either way: the ptsz entry point with stream 0 captures this thread's stream.
  void* begin = lookup("cuStreamBeginCapture", 10010, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  ASSERT_EQ(begin, dlsym(libcuda_, "cuStreamBeginCapture_v2_ptsz"));
  using BeginCapture = CUresult (*)(CUstream, CUstreamCaptureMode);
  ASSERT_EQ(reinterpret_cast<BeginCapture>(begin)(nullptr, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_last_stream(), CU_STREAM_PER_THREAD);
  void* end = lookup("cuStreamEndCapture", 10000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  CUgraph graph = nullptr;
  ASSERT_EQ(reinterpret_cast<CUresult (*)(CUstream, CUgraph*)>(end)(nullptr, &graph), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_last_stream(), CU_STREAM_PER_THREAD);
}

TEST_F(Interposition, NamesGpushimDoesNotServeComeBackAsTheDriversOwn) {
  for (const char* name : {"cuCtxGetCurrent", "cuMemAllocManaged", "cuMemAllocFromPoolAsync", "cuInit"}) {
    EXPECT_EQ(lookup(name, 13000), fake_cuda_proc_address(name, 13000, 0)) << name;
  }
  // Older prototypes are never replaced by gpushim's newer ones.
  EXPECT_EQ(lookup("cuMemAlloc", 2000), fake_cuda_proc_address("cuMemAlloc", 2000, 0));
  EXPECT_EQ(dlsym(libcuda_, "cuMemAlloc"), fake_cuda_proc_address("cuMemAlloc", 2000, 0));
  // A lookup that fails still fails.
  void* function = reinterpret_cast<void*>(1);
  CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
  EXPECT_NE(get_proc_("cuNoSuchFunction", &function, 13000, 0, &status), CUDA_SUCCESS);
  EXPECT_EQ(function, nullptr);
  EXPECT_EQ(status, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
  EXPECT_EQ(dlsym(libcuda_, "cuNoSuchFunction"), nullptr);
}

TEST_F(Interposition, DriverApiProgramsCallGpushimsExports) {
  EXPECT_TRUE(in_gpushim(reinterpret_cast<void*>(&cuMemAlloc_v2)));
  const int before = fake_cuda_calls("cuMemAlloc_v2");
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, 4096), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_calls("cuMemAlloc_v2"), before + 1);

  CUstream stream = nullptr;
  ASSERT_EQ(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUgraph graph = nullptr;
  ASSERT_EQ(cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_last_stream(), stream);
  ASSERT_EQ(cuStreamEndCapture(stream, &graph), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamDestroy(stream), CUDA_SUCCESS);
  EXPECT_GE(fake_cuda_calls("cuStreamBeginCapture_v2"), 1);
  EXPECT_GE(fake_cuda_calls("cuStreamDestroy_v2"), 1);
}

TEST_F(Interposition, RtldNextIsRelativeToTheRealCaller) {
  // From the program: the next definition of a gpushim export is gpushim's (it is preloaded right after).
  EXPECT_TRUE(in_gpushim(dlsym(RTLD_NEXT, "cuMemAlloc_v2")));
  EXPECT_EQ(dlsym(RTLD_NEXT, "strlen"), dlsym(RTLD_DEFAULT, "strlen"));
  // From a library loaded after gpushim: the next definition after that library, not itself.
  void* next = next_lookup_from_first();
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(reinterpret_cast<char (*)()>(next)(), 'b') << object_of(next);
  EXPECT_EQ(dlsym(RTLD_NEXT, "gpushim_no_such_symbol"), nullptr);
  EXPECT_NE(dlerror(), nullptr);
}

}  // namespace
