// SimulatedDevicesProvider: the placement policies and per-device accounting over host memory with
// several pretend GPUs, and the vmm arena running over it as it runs over CudaPeerProvider on the GPU.
#include "providers/simulated_devices_provider.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "allocators/arena_shards.h"
#include "allocators/vmm_arena.h"
#include "config/settings.h"

namespace gpushim {
namespace {

constexpr std::size_t kGranule = std::size_t{64} << 10;  // small granules keep the host footprint small

SimulatedDevicesOptions devices(std::vector<std::size_t> granule_caps, Placement placement, int local = 0,
                                bool rooms_known = false) {
  SimulatedDevicesOptions o;
  for (std::size_t g : granule_caps) o.capacities.push_back(g * kGranule);
  o.local_device = local;
  o.placement = placement;
  o.granularity = kGranule;
  o.rooms_known = rooms_known;
  return o;
}

char* at(void* base, std::size_t granule) { return static_cast<char*>(base) + granule * kGranule; }

TEST(SimulatedDevices, LocalMapsOnTheLocalDeviceAndAccountsPerDevice) {
  SimulatedDevicesProvider p(devices({8, 8}, Placement::local, 1));
  ASSERT_EQ(p.granularity(), kGranule);
  void* base = p.reserve(32 * kGranule);
  ASSERT_NE(base, nullptr);
  ASSERT_TRUE(p.map(base, 3 * kGranule));
  EXPECT_EQ(p.bytes_mapped_on(1), 3 * kGranule);
  EXPECT_EQ(p.bytes_mapped_on(0), 0u);
  EXPECT_EQ(p.bytes_mapped(), 3 * kGranule);
  for (std::size_t g = 0; g < 3; ++g) EXPECT_EQ(p.backing_device(at(base, g) + 17), 1);
  EXPECT_EQ(p.backing_device(at(base, 3)), -1);
  EXPECT_FALSE(p.map(at(base, 4), 6 * kGranule)) << "local has 5 granules left; local must not spill";
  EXPECT_EQ(p.bytes_mapped(), 3 * kGranule);
  p.unmap(base, 3 * kGranule);
  EXPECT_EQ(p.bytes_mapped(), 0u);
  EXPECT_EQ(p.bytes_mapped_on(1), 0u);
  EXPECT_EQ(p.backing_device(base), -1);
  p.release_reservation(base, 32 * kGranule);
  EXPECT_EQ(p.misuse_count(), 0u);
}

TEST(SimulatedDevices, InterleaveStripesGranulesAcrossDevicesByAddress) {
  SimulatedDevicesProvider p(devices({16, 16, 16}, Placement::interleave));
  void* base = p.reserve(64 * kGranule);
  ASSERT_NE(base, nullptr);
  const std::size_t first = reinterpret_cast<std::uintptr_t>(base) / kGranule;
  ASSERT_TRUE(p.map(base, 5 * kGranule));
  ASSERT_TRUE(p.map(at(base, 5), 7 * kGranule));  // a second grow step continues the same stripe
  for (std::size_t g = 0; g < 12; ++g) {
    EXPECT_EQ(p.backing_device(at(base, g)), static_cast<int>((first + g) % 3)) << "granule " << g;
    std::memset(at(base, g), static_cast<int>(g), kGranule);  // every granule is really memory
  }
  for (std::size_t g = 0; g < 12; ++g) EXPECT_EQ(at(base, g)[kGranule - 1], static_cast<char>(g));
  for (int d = 0; d < 3; ++d) EXPECT_EQ(p.bytes_mapped_on(d), 4 * kGranule);
  EXPECT_EQ(p.segments_backed(), 12u);
  p.unmap(base, 5 * kGranule);
  p.unmap(at(base, 5), 7 * kGranule);
  EXPECT_EQ(p.bytes_mapped(), 0u);
  EXPECT_EQ(p.misuse_count(), 0u);
}

TEST(SimulatedDevices, InterleaveSkipsAFullDevice) {
  SimulatedDevicesProvider p(devices({16, 1, 16}, Placement::interleave));
  void* base = p.reserve(64 * kGranule);
  ASSERT_NE(base, nullptr);
  ASSERT_TRUE(p.map(base, 9 * kGranule));
  EXPECT_EQ(p.bytes_mapped_on(1), 1 * kGranule);
  EXPECT_EQ(p.bytes_mapped_on(0) + p.bytes_mapped_on(2), 8 * kGranule);
  EXPECT_EQ(p.misuse_count(), 0u);
}

TEST(SimulatedDevices, SpillUsesPeersWhenLocalIsExhausted) {
  for (bool known : {true, false}) {
    SCOPED_TRACE(known ? "rooms known" : "rooms learned from failures");
    SimulatedDevicesProvider p(devices({4, 8, 6}, Placement::spill, 0, known));
    void* base = p.reserve(64 * kGranule);
    ASSERT_NE(base, nullptr);
    ASSERT_TRUE(p.map(base, 3 * kGranule));
    EXPECT_EQ(p.bytes_mapped_on(0), 3 * kGranule) << "fits locally: stays local";
    ASSERT_TRUE(p.map(at(base, 3), 10 * kGranule));
    EXPECT_EQ(p.bytes_mapped_on(0), 4 * kGranule) << "local is filled before any peer";
    EXPECT_LE(p.bytes_mapped_on(1), 8 * kGranule);
    EXPECT_LE(p.bytes_mapped_on(2), 6 * kGranule);
    EXPECT_EQ(p.bytes_mapped(), 13 * kGranule);
    // The last local granule first, then the peer with most room (known: 8 > 6; learned: both unknown,
    // so the participants' order), then the next.
    EXPECT_EQ(p.backing_device(at(base, 3)), 0);
    EXPECT_EQ(p.backing_device(at(base, 4)), 1);
    EXPECT_EQ(p.backing_device(at(base, 11)), 1);
    EXPECT_EQ(p.backing_device(at(base, 12)), 2);
    // Local is now full: a further map goes to the peers.
    ASSERT_TRUE(p.map(at(base, 13), 2 * kGranule));
    EXPECT_NE(p.backing_device(at(base, 13)), 0);
    EXPECT_FALSE(p.map(at(base, 15), 10 * kGranule)) << "only 3 granules left anywhere";
    EXPECT_EQ(p.bytes_mapped(), 15 * kGranule);
    p.unmap(at(base, 3), 10 * kGranule);
    EXPECT_EQ(p.bytes_mapped(), 5 * kGranule);
    EXPECT_EQ(p.misuse_count(), 0u);
  }
}

TEST(SimulatedDevices, UnmapMustMatchOneMap) {
  SimulatedDevicesProvider p(devices({8, 8}, Placement::interleave));
  void* base = p.reserve(16 * kGranule);
  ASSERT_TRUE(p.map(base, 4 * kGranule));
  p.unmap(base, 2 * kGranule);       // part of a mapping: refused and counted
  p.unmap(at(base, 1), kGranule);    // not the start of a mapping
  EXPECT_EQ(p.misuse_count(), 2u);
  EXPECT_EQ(p.bytes_mapped(), 4 * kGranule);
  EXPECT_FALSE(p.map(at(base, 2), 2 * kGranule)) << "over a mapped range";
  EXPECT_EQ(p.bytes_mapped(), 4 * kGranule);
}

TEST(SimulatedDevices, DescribesWhereMemoryLives) {
  SimulatedDevicesProvider p(devices({32, 32}, Placement::interleave));
  char buf[128];
  EXPECT_STREQ(describe_placement(p, buf, sizeof buf), "nothing mapped");
  void* base = p.reserve(64 * kGranule);
  ASSERT_TRUE(p.map(base, 32 * kGranule));  // 16 granules of 64 KiB = 1 MiB on each
  EXPECT_STREQ(describe_placement(p, buf, sizeof buf), "device 0: 1.00 MiB, device 1: 1.00 MiB");
  char tiny[8];
  describe_placement(p, tiny, sizeof tiny);
  EXPECT_EQ(std::strlen(tiny), sizeof tiny - 1);  // truncated, still terminated
}

Settings arena_settings() {
  Settings s;
  s.vmm_reserve = 256 * kGranule;
  s.vmm_grow_step = 2 * kGranule;
  s.vmm_release_threshold = kGranule;  // keep almost nothing idle
  return s;
}

TEST(SimulatedDevicesArena, SpillArenaFillsEveryDeviceThenFailsCleanly) {
  SimulatedDevicesProvider p(devices({6, 4, 4}, Placement::spill));
  auto arena = make_vmm_arena(p, arena_settings());
  ASSERT_NE(arena, nullptr);
  std::vector<void*> blocks;
  for (int i = 0; i < 100; ++i) {
    void* b = arena->allocate(kGranule, 0);
    if (!b) break;
    std::memset(b, i, kGranule);
    blocks.push_back(b);
  }
  EXPECT_EQ(blocks.size(), 14u) << "6 + 4 + 4 granules, one block each";
  EXPECT_EQ(p.bytes_mapped_on(0), 6 * kGranule);
  EXPECT_EQ(p.bytes_mapped_on(1), 4 * kGranule);
  EXPECT_EQ(p.bytes_mapped_on(2), 4 * kGranule);
  EXPECT_EQ(p.backing_device(blocks.front()), 0) << "the first blocks are local";
  for (std::size_t i = 0; i < blocks.size(); ++i)
    EXPECT_EQ(static_cast<unsigned char*>(blocks[i])[kGranule / 2], static_cast<unsigned char>(i));
  for (void* b : blocks) arena->deallocate(b, kGranule, 0);
  arena->release_cached();
  EXPECT_EQ(p.bytes_mapped(), 0u);
  arena.reset();
  EXPECT_EQ(p.misuse_count(), 0u);
}

TEST(SimulatedDevicesArena, InterleavedBlockLargerThanOneDevice) {
  SimulatedDevicesProvider p(devices({8, 8}, Placement::interleave));
  auto arena = make_vmm_arena(p, arena_settings());
  ASSERT_NE(arena, nullptr);
  const std::size_t bytes = 12 * kGranule;  // larger than either device
  auto* block = static_cast<unsigned char*>(arena->allocate(bytes, 0));
  ASSERT_NE(block, nullptr);
  int previous = -1;
  for (std::size_t g = 0; g < 12; ++g) {
    const int device = p.backing_device(block + g * kGranule);
    ASSERT_TRUE(device == 0 || device == 1);
    EXPECT_NE(device, previous) << "granule " << g << ": neighbours alternate";
    previous = device;
  }
  std::memset(block, 0xab, bytes);
  EXPECT_EQ(block[bytes - 1], 0xab);
  EXPECT_EQ(p.bytes_mapped_on(0), p.bytes_mapped_on(1));
  EXPECT_EQ(arena->allocate(6 * kGranule, 0), nullptr) << "4 granules left in all";
  arena->deallocate(block, bytes, 0);
  arena->release_cached();
  EXPECT_EQ(p.bytes_mapped(), 0u);
  arena.reset();
  EXPECT_EQ(p.misuse_count(), 0u);
}

TEST(SimulatedDevicesArena, LocalArenaOnOneDeviceIsTheOneDeviceArena) {
  SimulatedDevicesProvider p(devices({8}, Placement::local));
  auto arena = make_vmm_arena(p, arena_settings());
  ASSERT_NE(arena, nullptr);
  void* a = arena->allocate(5 * kGranule, 0);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(p.backing_device(a), 0);
  EXPECT_EQ(arena->allocate(4 * kGranule, 0), nullptr);
  arena->deallocate(a, 5 * kGranule, 0);
  arena.reset();
  EXPECT_EQ(p.bytes_mapped(), 0u);
  EXPECT_EQ(p.misuse_count(), 0u);
}

}  // namespace
}  // namespace gpushim
