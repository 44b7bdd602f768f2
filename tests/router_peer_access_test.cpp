// Peer access follows the program, end to end through the preloaded libgpushim.so over two fake
// devices (tests/fake_driver/fake_libcuda.cpp records which devices each cuMemSetAccess names):
// cuCtxEnablePeerAccess gives the peer access to every block of the other device, made before or after
// the call, and Disable takes it back; cuMemPoolSetAccess on a device's default pool does the same for
// its cuMemAllocAsync blocks. tests/router_e2e.cmake runs it under every backend (passthrough: the
// driver's own rules, which the fake applies to its cuMemAlloc and pool allocations).
#include <cuda.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <set>

extern "C" {
int fake_cuda_accessible_from(CUdeviceptr p, int device);
int fake_cuda_peer_enabled(int device, int peer);
int fake_cuda_device_of(CUdeviceptr p);
std::size_t fake_cuda_physical_bytes(int device);
}

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

bool backend_is(const char* name) {
  const char* backend = std::getenv("GPUSHIM_BACKEND");
  return backend && std::strcmp(backend, name) == 0;
}

class PeerAccessEndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("LD_PRELOAD"), nullptr) << "run through ctest: it preloads libgpushim.so";
    ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
    int count = 0;
    ASSERT_EQ(cuDeviceGetCount(&count), CUDA_SUCCESS);
    ASSERT_GE(count, 2) << "tests/router_e2e.cmake runs this with FAKE_CUDA_DEVICES=2";
    CUdevice dev = 0;
    ASSERT_EQ(cuDeviceGet(&dev, 0), CUDA_SUCCESS);
    ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx0_, dev), CUDA_SUCCESS);
    ASSERT_EQ(cuDeviceGet(&dev, 1), CUDA_SUCCESS);
    ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx1_, dev), CUDA_SUCCESS);
    ASSERT_EQ(cuCtxSetCurrent(ctx0_), CUDA_SUCCESS);
  }
  CUcontext ctx0_ = nullptr, ctx1_ = nullptr;
};

// One test: the grants are process-wide, so the steps depend on each other's order.
TEST_F(PeerAccessEndToEnd, AccessFollowsEnableDisableAndPoolAccess) {
  CUdeviceptr before = 0, small = 0;
  ASSERT_EQ(cuMemAlloc(&before, 8 * MiB), CUDA_SUCCESS);  // made before peer access is enabled
  ASSERT_EQ(cuMemAlloc(&small, 300), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_accessible_from(before, 0), 1);
  EXPECT_EQ(fake_cuda_accessible_from(before, 1), 0) << "no access before the program asks for it";

  // Device 1 enables access to device 0's memory (cudaSetDevice(1); cudaDeviceEnablePeerAccess(0)).
  ASSERT_EQ(cuCtxSetCurrent(ctx1_), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxEnablePeerAccess(ctx0_, 0), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_peer_enabled(1, 0), 1) << "the real call was made";
  EXPECT_EQ(fake_cuda_accessible_from(before, 1), 1) << "an allocation made before the call";
  EXPECT_EQ(fake_cuda_accessible_from(small, 1), 1);
  EXPECT_EQ(cuCtxEnablePeerAccess(ctx0_, 0), CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) << "the driver's answer";

  ASSERT_EQ(cuCtxSetCurrent(ctx0_), CUDA_SUCCESS);
  CUdeviceptr after = 0;
  ASSERT_EQ(cuMemAlloc(&after, 64 * MiB), CUDA_SUCCESS);  // a new mapping, after the call
  EXPECT_EQ(fake_cuda_accessible_from(after, 1), 1) << "an allocation made after the call";
  EXPECT_EQ(fake_cuda_accessible_from(after + 63 * MiB, 1), 1);

  // Device 1's own memory is not reachable from device 0: that direction was never enabled.
  ASSERT_EQ(cuCtxSetCurrent(ctx1_), CUDA_SUCCESS);
  CUdeviceptr on1 = 0;
  ASSERT_EQ(cuMemAlloc(&on1, 4 * MiB), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_accessible_from(on1, 1), 1);
  EXPECT_EQ(fake_cuda_accessible_from(on1, 0), 0);

  ASSERT_EQ(cuCtxDisablePeerAccess(ctx0_), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_accessible_from(before, 1), 0) << "disable takes the access back";
  EXPECT_EQ(fake_cuda_accessible_from(after, 1), 0);
  EXPECT_EQ(cuCtxDisablePeerAccess(ctx0_), CUDA_ERROR_PEER_ACCESS_NOT_ENABLED);

  // Device 0's default pool made accessible from device 1: its async blocks follow.
  ASSERT_EQ(cuCtxSetCurrent(ctx0_), CUDA_SUCCESS);
  CUmemoryPool pool = nullptr;
  ASSERT_EQ(cuDeviceGetDefaultMemPool(&pool, 0), CUDA_SUCCESS);
  CUmemAccessDesc desc{};
  desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  desc.location.id = 1;
  desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  ASSERT_EQ(cuMemPoolSetAccess(pool, &desc, 1), CUDA_SUCCESS);
  CUstream stream = nullptr;
  ASSERT_EQ(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUdeviceptr async = 0;
  ASSERT_EQ(cuMemAllocAsync(&async, 16 * MiB + 4 * KiB, stream), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_accessible_from(async, 1), 1) << "cuMemAllocAsync block after cuMemPoolSetAccess";
  // gpushim's choice (docs/peers.md): its cuMemAlloc and cuMemAllocAsync blocks share memory, so the
  // pool's grant covers both; passthrough's cuMemAlloc blocks keep the driver's rule (not covered).
  EXPECT_EQ(fake_cuda_accessible_from(before, 1), backend_is("passthrough") ? 0 : 1);

  // Peer access enabled and then disabled again keeps the pool's grant.
  ASSERT_EQ(cuCtxSetCurrent(ctx1_), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxEnablePeerAccess(ctx0_, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxDisablePeerAccess(ctx0_), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_accessible_from(async, 1), 1) << "the pool grant still holds";
  desc.flags = CU_MEM_ACCESS_FLAGS_PROT_NONE;
  ASSERT_EQ(cuMemPoolSetAccess(pool, &desc, 1), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_accessible_from(async, 1), 0) << "no grant left";

  ASSERT_EQ(cuCtxSetCurrent(ctx0_), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFreeAsync(async, stream), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(stream), CUDA_SUCCESS);
  for (CUdeviceptr p : {before, small, after, on1}) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

// Peer access enabled before device 0 has a backend: the grant waits for the backend and applies then.
TEST_F(PeerAccessEndToEnd, GrantBeforeTheFirstAllocationAppliesWhenTheBackendIsBuilt) {
  if (std::getenv("E2E_PEER_EARLY") == nullptr) GTEST_SKIP() << "runs in its own process (E2E_PEER_EARLY)";
  ASSERT_EQ(cuCtxSetCurrent(ctx1_), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxEnablePeerAccess(ctx0_, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx0_), CUDA_SUCCESS);
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, 1 * MiB), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_accessible_from(p, 1), 1);
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

// A machine without a link between every pair of GPUs (tests/router_e2e.cmake: four fake devices,
// FAKE_CUDA_NO_PEER=0-2, GPUSHIM_PEERS=all, interleave). Each device's memory is shared only with devices
// that all reach each other (device 2 is left out of device 0's and device 1's, device 0 out of device
// 2's); the program's own peer access between the unlinked pair gets the driver's answer; and a grant a
// device cannot honour (device 2 to device 1's memory, part of which lies on device 0) is refused with a
// warning instead of breaking every later allocation of device 1.
TEST_F(PeerAccessEndToEnd, PartialTopologyUnderPeersAllKeepsEveryDeviceServed) {
  if (std::getenv("FAKE_CUDA_NO_PEER") == nullptr) GTEST_SKIP() << "runs with FAKE_CUDA_NO_PEER=0-2";
  int count = 0;
  ASSERT_EQ(cuDeviceGetCount(&count), CUDA_SUCCESS);
  ASSERT_EQ(count, 4) << "tests/router_e2e.cmake runs this with FAKE_CUDA_DEVICES=4";
  CUcontext ctx[4] = {};
  for (int d = 0; d < 4; ++d) {
    CUdevice dev = 0;
    ASSERT_EQ(cuDeviceGet(&dev, d), CUDA_SUCCESS);
    ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx[d], dev), CUDA_SUCCESS);
  }
  // The program asks for access across the missing link: the driver's own refusal, nothing else.
  ASSERT_EQ(cuCtxSetCurrent(ctx[2]), CUDA_SUCCESS);
  EXPECT_EQ(cuCtxEnablePeerAccess(ctx[0], 0), CUDA_ERROR_PEER_ACCESS_UNSUPPORTED);
  // Device 2 may reach device 1 natively; asked before device 1 has a backend (the early path).
  EXPECT_EQ(cuCtxEnablePeerAccess(ctx[1], 0), CUDA_SUCCESS);

  constexpr std::size_t kBytes = 64 * MiB;  // 32 granules: the stripe visits every participant
  CUdeviceptr block[4] = {};
  std::set<int> backing[4];
  for (int d = 0; d < 4; ++d) {
    ASSERT_EQ(cuCtxSetCurrent(ctx[d]), CUDA_SUCCESS);
    ASSERT_EQ(cuMemAlloc(&block[d], kBytes), CUDA_SUCCESS) << "device " << d << " must still allocate";
    for (std::size_t at = 0; at < kBytes; at += 2 * MiB) backing[d].insert(fake_cuda_device_of(block[d] + at));
  }
  EXPECT_EQ(backing[0], (std::set<int>{0, 1, 3})) << "device 2 cannot reach device 0: left out";
  EXPECT_EQ(backing[1], (std::set<int>{0, 1, 3})) << "device 2 cannot reach device 0, a member: left out";
  EXPECT_EQ(backing[2], (std::set<int>{1, 2, 3})) << "device 0 cannot reach device 2: left out";
  EXPECT_EQ(backing[3], (std::set<int>{0, 1, 3})) << "the first members reached; device 2 not with device 0";
  EXPECT_EQ(fake_cuda_accessible_from(block[0], 2), 0);
  EXPECT_EQ(fake_cuda_accessible_from(block[0], 3), 1) << "a participant";
  EXPECT_EQ(fake_cuda_accessible_from(block[1], 2), 0) << "refused: part of it lies on device 0";
  EXPECT_EQ(fake_cuda_accessible_from(block[2], 1), 1) << "a participant";
  for (int d = 0; d < 4; ++d) {
    ASSERT_EQ(cuCtxSetCurrent(ctx[d]), CUDA_SUCCESS);
    EXPECT_EQ(cuMemFree(block[d]), CUDA_SUCCESS);
  }
  ASSERT_EQ(cuCtxSetCurrent(ctx[0]), CUDA_SUCCESS);
}

}  // namespace
