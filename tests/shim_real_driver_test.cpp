// driver/real_driver.cpp against the fake libcuda.so.1 (LD_LIBRARY_PATH, tests/shim.cmake), no preload:
// the bootstrap finds the driver, every entry has cuda.h's prototype, and it is safe from many threads.
#include "driver/real_driver.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace {

using ProcAddressOfFake = void* (*)(const char*, int, cuuint64_t);

// First in this file on purpose: the first call to real_driver() is the one that bootstraps.
TEST(RealDriver, BootstrapsOnceFromManyThreads) {
  constexpr int kThreads = 8;
  std::vector<const gpushim::RealDriver*> seen(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back([&, i] { seen[i] = &gpushim::real_driver(); });
  for (auto& thread : threads) thread.join();
  for (const auto* driver : seen) {
    EXPECT_EQ(driver, seen[0]);
    EXPECT_TRUE(driver->loaded);
  }
}

TEST(RealDriver, EntriesHaveTheirCudaHeaderPrototype) {
  const gpushim::RealDriver& driver = gpushim::real_driver();
  void* libcuda = gpushim::libcuda_handle();
  ASSERT_NE(libcuda, nullptr);
  auto fake_proc_address = reinterpret_cast<ProcAddressOfFake>(dlsym(libcuda, "fake_cuda_proc_address"));
  ASSERT_NE(fake_proc_address, nullptr);
  EXPECT_EQ(reinterpret_cast<void*>(driver.cuMemAlloc), fake_proc_address("cuMemAlloc", 3020, 0));
  EXPECT_EQ(reinterpret_cast<void*>(driver.cuGetProcAddress), fake_proc_address("cuGetProcAddress", 12000, 0));
  // At CUDA_VERSION the driver answers "cuCtxSynchronize" with the v2 that takes a context; the table
  // must hold the zero-argument function cuda.h declares under that name.
  ASSERT_NE(fake_proc_address("cuCtxSynchronize", CUDA_VERSION, 0), fake_proc_address("cuCtxSynchronize", 2000, 0));
  EXPECT_EQ(reinterpret_cast<void*>(driver.cuCtxSynchronize), fake_proc_address("cuCtxSynchronize", 2000, 0));
  EXPECT_EQ(driver.cuCtxSynchronize(), CUDA_SUCCESS);
}

TEST(RealDriver, RealDlsymIsGlibcs) {
  EXPECT_EQ(gpushim::real_dlsym(RTLD_DEFAULT, "strlen"), dlsym(RTLD_DEFAULT, "strlen"));
  EXPECT_EQ(gpushim::real_dlsym(RTLD_DEFAULT, "gpushim_no_such_symbol"), nullptr);
}

}  // namespace
