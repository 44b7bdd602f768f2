// CudaPeerProvider on the real driver (ctest label "gpu"; skips without a GPU). With one GPU it must
// behave as the one-device provider; with two or more, placement and the per-device caps are checked
// by where each granule lives and by the data. Kernel access from the peers is test_apps/peer_access.
#include "providers/cuda_peer_provider.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "driver/real_driver.h"

namespace gpushim {
namespace {

class CudaPeerProviderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const RealDriver& d = real_driver();
    if (!d.loaded || d.cuInit(0) != CUDA_SUCCESS || d.cuDeviceGetCount(&devices_) != CUDA_SUCCESS ||
        devices_ == 0)
      GTEST_SKIP() << "no GPU: skipped";
    CUdevice dev = 0;
    ASSERT_EQ(d.cuDeviceGet(&dev, 0), CUDA_SUCCESS);
    ASSERT_EQ(d.cuDevicePrimaryCtxRetain(&context_, dev), CUDA_SUCCESS);
    ASSERT_EQ(d.cuCtxSetCurrent(context_), CUDA_SUCCESS);
  }

  // Writes a pattern over [p, p+bytes) from the host, reads it back, compares.
  static void expect_round_trip(void* p, std::size_t bytes, std::uint8_t seed) {
    const RealDriver& d = real_driver();
    std::vector<std::uint8_t> out(bytes), in(bytes);
    for (std::size_t i = 0; i < bytes; ++i) out[i] = static_cast<std::uint8_t>(seed + i * 7 + (i >> 20));
    ASSERT_EQ(d.cuMemcpyHtoD(reinterpret_cast<CUdeviceptr>(p), out.data(), bytes), CUDA_SUCCESS);
    ASSERT_EQ(d.cuMemcpyDtoH(in.data(), reinterpret_cast<CUdeviceptr>(p), bytes), CUDA_SUCCESS);
    EXPECT_TRUE(in == out);
  }

  int devices_ = 0;
  CUcontext context_ = nullptr;
};

TEST_F(CudaPeerProviderTest, EveryPolicyMapsUsableMemoryAndRecordsWhereItLives) {
  for (Placement policy : {Placement::local, Placement::interleave, Placement::spill}) {
    SCOPED_TRACE(placement_name(policy));
    CudaPeerProvider p(0, "all", policy);
    ASSERT_TRUE(p.ok());
    const std::size_t g = p.granularity();
    const int n = static_cast<int>(p.participants().size());
    ASSERT_GE(n, 1);
    EXPECT_EQ(p.participants().front(), 0);
    void* base = p.reserve(64 * g);
    ASSERT_NE(base, nullptr);
    ASSERT_TRUE(p.map(base, 8 * g));
    EXPECT_EQ(p.bytes_mapped(), 8 * g);
    const std::size_t first = reinterpret_cast<std::uintptr_t>(base) / g;
    for (std::size_t i = 0; i < 8; ++i) {
      const int device = p.backing_device(static_cast<char*>(base) + i * g);
      if (policy == Placement::interleave)
        EXPECT_EQ(device, p.participants()[(first + i) % n]) << "granule " << i;
      else
        EXPECT_EQ(device, 0) << "granule " << i;  // local and spill with room: local
    }
    expect_round_trip(base, 8 * g, 3);
    p.unmap(base, 8 * g);
    EXPECT_EQ(p.bytes_mapped(), 0u);
    for (int d : p.participants()) EXPECT_EQ(p.bytes_mapped_on(d), 0u);
    p.release_reservation(base, 64 * g);
  }
}

TEST_F(CudaPeerProviderTest, PerDeviceCapBoundsLocalAndSpillGoesToPeers) {
  const std::size_t probe_g = CudaPeerProvider(0, "", Placement::local).granularity();
  for (Placement policy : {Placement::local, Placement::spill}) {
    SCOPED_TRACE(placement_name(policy));
    CudaPeerProvider p(0, "all", policy, {2 * probe_g});  // device 0 may back 2 granules
    ASSERT_TRUE(p.ok());
    const std::size_t g = p.granularity();
    ASSERT_EQ(g, probe_g);
    void* base = p.reserve(64 * g);
    ASSERT_NE(base, nullptr);
    const bool has_peers = p.participants().size() > 1;
    const bool expect_fit = policy == Placement::spill && has_peers;
    EXPECT_EQ(p.map(base, 6 * g), expect_fit);
    if (expect_fit) {
      EXPECT_EQ(p.bytes_mapped_on(0), 2 * g);
      EXPECT_EQ(p.bytes_mapped(), 6 * g);
      EXPECT_EQ(p.backing_device(base), 0);
      EXPECT_NE(p.backing_device(static_cast<char*>(base) + 5 * g), 0);
      expect_round_trip(base, 6 * g, 11);
      p.unmap(base, 6 * g);
    } else {
      EXPECT_EQ(p.bytes_mapped(), 0u) << "a refused map leaves nothing behind";
      ASSERT_TRUE(p.map(base, 2 * g));  // what the cap allows still maps
      expect_round_trip(base, 2 * g, 5);
      p.unmap(base, 2 * g);
    }
    EXPECT_EQ(p.bytes_mapped(), 0u);
    p.release_reservation(base, 64 * g);
  }
}

TEST_F(CudaPeerProviderTest, MapLargerThanEveryDeviceFailsAndLeavesNothing) {
  for (Placement policy : {Placement::local, Placement::spill}) {
    SCOPED_TRACE(placement_name(policy));
    CudaPeerProvider p(0, "all", policy);
    ASSERT_TRUE(p.ok());
    std::size_t total = 0;
    for (int d : p.participants()) {
      CUdevice dev = 0;
      std::size_t bytes = 0;
      ASSERT_EQ(real_driver().cuDeviceGet(&dev, d), CUDA_SUCCESS);
      ASSERT_EQ(real_driver().cuDeviceTotalMem(&bytes, dev), CUDA_SUCCESS);
      total += bytes;
    }
    const std::size_t g = p.granularity();
    const std::size_t too_much = (total / g + 16) * g;  // more than all participants hold together
    void* base = p.reserve(too_much);
    ASSERT_NE(base, nullptr);
    EXPECT_FALSE(p.map(base, too_much));
    EXPECT_EQ(p.bytes_mapped(), 0u);
    ASSERT_TRUE(p.map(base, 4 * g)) << "memory given back by the failed map is usable again";
    expect_round_trip(base, 4 * g, 9);
    p.unmap(base, 4 * g);
    p.release_reservation(base, too_much);
  }
}

TEST_F(CudaPeerProviderTest, OneParticipantWithoutPeersSetting) {
  CudaPeerProvider p(0, "", Placement::interleave);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p.participants(), (std::vector<int>{0}));
  EXPECT_EQ(p.backing_device(nullptr), -1);
}

TEST_F(CudaPeerProviderTest, UnknownDeviceOrdinalsAreLeftOut) {
  CudaPeerProvider p(0, "0,4096", Placement::local);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p.participants(), (std::vector<int>{0}));
}

}  // namespace
}  // namespace gpushim
