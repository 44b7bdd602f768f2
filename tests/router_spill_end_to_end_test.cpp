// GPUSHIM_SPILL=host end to end: libgpushim.so (interposer, router, a real backend, the spill tier)
// over the fake driver, whose host-located VMM memory is counted apart from device memory and which
// calls it CU_MEMORYTYPE_HOST as the H100's driver does. tests/spill.cmake runs it per backend with
// GPUSHIM_LIMIT (E2E_LIMIT_BYTES) and GPUSHIM_SPILL_LIMIT (E2E_SPILL_LIMIT_BYTES), spilling or not.
#include <cuda.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
void fake_cuda_hold_gpu(int held);
std::size_t fake_cuda_physical_bytes(int device);
std::size_t fake_cuda_host_physical_bytes();
int fake_cuda_device_of(CUdeviceptr p);
}

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t kBlock = 32 * MiB;
constexpr int kHostLocation = -2;  // fake_cuda_device_of() for host-located memory

std::size_t env_bytes(const char* name) {
  const char* text = std::getenv(name);
  return text ? std::strtoull(text, nullptr, 10) : 0;
}

void fill(CUdeviceptr p, std::size_t bytes, unsigned char value) {
  std::memset(reinterpret_cast<void*>(p), value, bytes);
}
// Every byte: a spilled block must hold exactly what was written, like any other.
bool holds(CUdeviceptr p, std::size_t bytes, unsigned char value) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < bytes; ++i)
    if (b[i] != value) return false;
  return true;
}

class SpillEndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("LD_PRELOAD"), nullptr) << "run through ctest: it preloads libgpushim.so";
    limit_ = env_bytes("E2E_LIMIT_BYTES");
    spill_limit_ = env_bytes("E2E_SPILL_LIMIT_BYTES");
    ASSERT_GT(limit_, 0u);
    ASSERT_GT(spill_limit_, 0u);
    ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
    fake_cuda_hold_gpu(0);
  }
  std::size_t limit_ = 0;
  std::size_t spill_limit_ = 0;
};

TEST_F(SpillEndToEnd, PastTheLimitItSpillsThenFailsAtTheSpillCap) {
  // 1.5x the limit, written and read back byte for byte.
  std::vector<CUdeviceptr> blocks;
  const std::size_t wanted = (limit_ + limit_ / 2) / kBlock;
  ASSERT_LE(wanted * kBlock, limit_ + spill_limit_) << "the fixture's caps cannot hold 1.5x the limit";
  for (std::size_t i = 0; i < wanted; ++i) {
    CUdeviceptr p = 0;
    ASSERT_EQ(cuMemAlloc(&p, kBlock), CUDA_SUCCESS) << "block " << i << " of " << wanted;
    fill(p, kBlock, static_cast<unsigned char>(i + 1));
    blocks.push_back(p);
  }
  std::size_t on_device = 0, on_host = 0;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(holds(blocks[i], kBlock, static_cast<unsigned char>(i + 1))) << "block " << i;
    const int where = fake_cuda_device_of(blocks[i]);
    if (where == 0) ++on_device;
    if (where == kHostLocation) ++on_host;
    EXPECT_TRUE(where == 0 || where == kHostLocation) << where;
  }
  EXPECT_EQ(on_device + on_host, blocks.size());
  EXPECT_GE(on_host, blocks.size() - limit_ / kBlock) << "what the limit cannot hold is on the host";
  EXPECT_LE(fake_cuda_physical_bytes(0), limit_) << "the device never holds more than GPUSHIM_LIMIT";
  EXPECT_GT(fake_cuda_host_physical_bytes(), 0u);
  EXPECT_LE(fake_cuda_host_physical_bytes(), spill_limit_);
  // The device blocks were served first: spilling happens only once the device is full.
  EXPECT_GE(on_device * kBlock, limit_ - 2 * kBlock);

  // cuMemGetInfo is about the device: the total is the limit, and free is what the device has left.
  std::size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cuMemGetInfo(&free_bytes, &total), CUDA_SUCCESS);
  EXPECT_EQ(total, limit_);
  EXPECT_LE(free_bytes, limit_ - on_device * kBlock);

  // A spilled block answers pointer queries as device memory (shim/pointer_query_hooks.cpp); the fake
  // driver itself calls it host memory, as the real one does.
  CUdeviceptr spilled = 0, resident = 0;
  for (CUdeviceptr p : blocks) (fake_cuda_device_of(p) == kHostLocation ? spilled : resident) = p;
  ASSERT_NE(spilled, 0u);
  ASSERT_NE(resident, 0u);
  unsigned int type = 0;
  ASSERT_EQ(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, spilled + 4096), CUDA_SUCCESS);
  EXPECT_EQ(type, CU_MEMORYTYPE_DEVICE);
  ASSERT_EQ(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, resident), CUDA_SUCCESS);
  EXPECT_EQ(type, CU_MEMORYTYPE_DEVICE);
  int ordinal = -7;
  ASSERT_EQ(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, spilled), CUDA_SUCCESS);
  EXPECT_EQ(ordinal, 0);
  void* host_pointer = nullptr;
  EXPECT_EQ(cuPointerGetAttribute(&host_pointer, CU_POINTER_ATTRIBUTE_HOST_POINTER, spilled),
            CUDA_ERROR_INVALID_VALUE) << "device memory has no host pointer";
  {
    CUpointer_attribute asked[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                   CU_POINTER_ATTRIBUTE_HOST_POINTER};
    unsigned int many_type = 0;
    int many_ordinal = -7;
    void* many_host = reinterpret_cast<void*>(1);
    void* answers[] = {&many_type, &many_ordinal, &many_host};
    ASSERT_EQ(cuPointerGetAttributes(3, asked, answers, spilled), CUDA_SUCCESS);
    EXPECT_EQ(many_type, CU_MEMORYTYPE_DEVICE);
    EXPECT_EQ(many_ordinal, 0);
    EXPECT_EQ(many_host, nullptr);
  }

  // Past the spill cap: CUDA_ERROR_OUT_OF_MEMORY, and the report says what was spilled.
  testing::internal::CaptureStderr();
  CUresult rc = CUDA_SUCCESS;
  while (blocks.size() * kBlock <= limit_ + spill_limit_ + kBlock) {
    CUdeviceptr p = 0;
    rc = cuMemAlloc(&p, kBlock);
    if (rc != CUDA_SUCCESS) break;
    blocks.push_back(p);
  }
  const std::string report = testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_LE(blocks.size() * kBlock, limit_ + spill_limit_);
  EXPECT_NE(report.find("out of memory on device 0"), std::string::npos) << report;
  EXPECT_NE(report.find("spilled to host: live "), std::string::npos) << report;
  EXPECT_LE(fake_cuda_host_physical_bytes(), spill_limit_);

  // The device's blocks freed, the spilled ones kept: the device is free again (host memory does not
  // count against it), and new blocks land on the device.
  std::vector<CUdeviceptr> kept;
  for (CUdeviceptr p : blocks) {
    if (fake_cuda_device_of(p) == kHostLocation) {
      kept.push_back(p);
    } else {
      ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
    }
  }
  ASSERT_EQ(cuMemGetInfo(&free_bytes, &total), CUDA_SUCCESS);
  EXPECT_GE(free_bytes, limit_ - 2 * MiB) << "spilled blocks must not count as device memory";
  std::vector<CUdeviceptr> again;
  for (std::size_t i = 0; i < limit_ / kBlock; ++i) {
    CUdeviceptr p = 0;
    ASSERT_EQ(cuMemAlloc(&p, kBlock), CUDA_SUCCESS);
    EXPECT_EQ(fake_cuda_device_of(p), 0) << "block " << i << " spilled while the device had room";
    again.push_back(p);
  }
  for (std::size_t i = 0; i < kept.size(); ++i) EXPECT_NE(fake_cuda_device_of(kept[i]), 0);
  for (CUdeviceptr p : again) ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  for (CUdeviceptr p : kept) ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(kept.front()), CUDA_ERROR_INVALID_VALUE) << "a double free of a spilled block";
}

// Without spilling (GPUSHIM_SPILL unset, or a setup that cannot spill): the limit fails allocations as
// it always did, and no host memory is mapped.
TEST_F(SpillEndToEnd, WithoutSpillingItFailsAtTheCap) {
  std::vector<CUdeviceptr> blocks;
  CUresult rc = CUDA_SUCCESS;
  testing::internal::CaptureStderr();
  while (blocks.size() * kBlock <= limit_ + kBlock) {
    CUdeviceptr p = 0;
    rc = cuMemAlloc(&p, kBlock);
    if (rc != CUDA_SUCCESS) break;
    blocks.push_back(p);
  }
  const std::string report = testing::internal::GetCapturedStderr();
  std::fputs(report.c_str(), stderr);  // tests/spill.cmake looks for the line that says why it cannot spill
  EXPECT_EQ(rc, CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_LE(blocks.size() * kBlock, limit_);
  EXPECT_EQ(fake_cuda_host_physical_bytes(), 0u);
  EXPECT_NE(report.find("out of memory on device 0"), std::string::npos) << report;
  EXPECT_EQ(report.find("spilled"), std::string::npos) << report;
  for (CUdeviceptr p : blocks) EXPECT_NE(fake_cuda_device_of(p), kHostLocation);
  for (CUdeviceptr p : blocks) ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

}  // namespace
