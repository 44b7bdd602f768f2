// Host spill on the CPU (allocators/spilling_allocator.h): which blocks go to the host, the caps, the
// statistics, where frees go, and that memory comes back to the device; the report lines; the host
// memory a share of GPUSHIM_SPILL_LIMIT is taken of. Both tiers run over HostProvider, capped by
// LimitedProvider as the router caps them (GPUSHIM_LIMIT, GPUSHIM_SPILL_LIMIT).
#include "allocators/spilling_allocator.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "allocators/statistics_allocator.h"
#include "allocators/vmm_arena.h"
#include "providers/host_memory_capacity.h"
#include "providers/host_provider.h"
#include "providers/limited_provider.h"
#include "router/memory_report.h"

namespace gpushim {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t kBlock = 32 * MiB;        // at least one arena grow step: one block per mapping
constexpr std::size_t kDeviceCap = 128 * MiB;   // GPUSHIM_LIMIT
constexpr std::size_t kSpillCap = 96 * MiB;     // GPUSHIM_SPILL_LIMIT

VmmArenaOptions small_arena() {
  VmmArenaOptions options;
  options.reserve = std::size_t{1} << 30;
  options.grow_step = kBlock;
  return options;
}

// The device tier and the host tier, each over its own host memory and cap, wrapped as the router
// wraps them (statistics outermost).
class Spill : public ::testing::Test {
 protected:
  Spill()
      : device_capped_(device_memory_, kDeviceCap), host_capped_(host_memory_, kSpillCap) {
    auto spilling = std::make_unique<SpillingAllocator>(std::make_unique<VmmArena>(device_capped_, small_arena()),
                                                        std::make_unique<VmmArena>(host_capped_, small_arena()));
    spilling_ = spilling.get();
    backend_ = std::make_unique<StatisticsAllocator>(std::move(spilling));
  }
  // What the router does: the device first; the spill tier only once that failed.
  void* allocate(std::size_t bytes) {
    if (void* p = backend_->allocate(bytes, 0)) return p;
    return backend_->allocate_spilled(bytes, 0);
  }

  HostProvider device_memory_;
  HostProvider host_memory_;
  LimitedProvider device_capped_;
  LimitedProvider host_capped_;
  SpillingAllocator* spilling_ = nullptr;
  std::unique_ptr<Allocator> backend_;
};

TEST_F(Spill, TheDeviceFirstThenTheBlockThatDoesNotFitGoesToTheHostWhole) {
  std::vector<void*> device_blocks;
  for (std::size_t i = 0; i < kDeviceCap / kBlock; ++i) {
    void* p = backend_->allocate(kBlock, 0);
    ASSERT_NE(p, nullptr) << i;
    EXPECT_FALSE(spilling_->is_spilled(p));
    device_blocks.push_back(p);
  }
  // allocate() alone never spills: the device is full, so it fails as without spilling.
  EXPECT_EQ(backend_->allocate(kBlock, 0), nullptr);
  void* spilled = backend_->allocate_spilled(kBlock, 0);
  ASSERT_NE(spilled, nullptr);
  EXPECT_TRUE(spilling_->is_spilled(spilled));
  EXPECT_TRUE(spilling_->is_spilled(static_cast<char*>(spilled) + kBlock - 1));  // the whole block
  EXPECT_EQ(device_memory_.bytes_mapped(), kDeviceCap);
  EXPECT_EQ(host_memory_.bytes_mapped(), kBlock);
  std::memset(spilled, 0x5a, kBlock);  // real memory behind it
  EXPECT_EQ(static_cast<unsigned char*>(spilled)[kBlock - 1], 0x5a);
  for (void* p : device_blocks) backend_->deallocate(p, kBlock, 0);
  backend_->deallocate(spilled, kBlock, 0);
}

TEST_F(Spill, StatsKeepTheDeviceFiguresAndCountTheSpilledApart) {
  std::vector<void*> blocks;
  for (std::size_t i = 0; i < kDeviceCap / kBlock + 2; ++i) blocks.push_back(allocate(kBlock));
  for (void* p : blocks) ASSERT_NE(p, nullptr);
  const AllocatorStats s = backend_->stats();
  EXPECT_EQ(s.bytes_reserved, kDeviceCap) << "cuMemGetInfo's footprint must be the device's alone";
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(s.bytes_in_use, kDeviceCap + 2 * kBlock);
  EXPECT_EQ(s.spilled_allocations, 2u);
  EXPECT_EQ(s.bytes_spilled, 2 * kBlock);
  EXPECT_EQ(s.peak_bytes_spilled, 2 * kBlock);
  EXPECT_EQ(s.spill_reserved, 2 * kBlock);
  backend_->deallocate(blocks.back(), kBlock, 0);
  const AllocatorStats after = backend_->stats();
  EXPECT_EQ(after.bytes_spilled, kBlock);
  EXPECT_EQ(after.peak_bytes_spilled, 2 * kBlock);
  EXPECT_EQ(after.bytes_reserved, kDeviceCap);
  EXPECT_EQ(after.bytes_in_use, kDeviceCap + kBlock);
  blocks.pop_back();
  for (void* p : blocks) backend_->deallocate(p, kBlock, 0);
  EXPECT_EQ(backend_->stats().bytes_in_use, 0u);
  EXPECT_EQ(backend_->stats().bytes_spilled, 0u);
}

TEST_F(Spill, TheSpillCapFailsAllocations) {
  std::vector<void*> blocks;
  for (void* p; (p = allocate(kBlock)) != nullptr;) blocks.push_back(p);
  EXPECT_EQ(blocks.size(), (kDeviceCap + kSpillCap) / kBlock);
  EXPECT_LE(host_memory_.bytes_mapped(), kSpillCap);
  EXPECT_EQ(backend_->allocate_spilled(MiB, 0), nullptr);
  for (void* p : blocks) backend_->deallocate(p, kBlock, 0);
}

TEST_F(Spill, FreesGoToTheTierThatServedTheBlock) {
  std::vector<void*> device_blocks;
  for (std::size_t i = 0; i < kDeviceCap / kBlock; ++i) device_blocks.push_back(allocate(kBlock));
  void* spilled = allocate(kBlock);
  ASSERT_TRUE(spilling_->is_spilled(spilled));
  // A device block freed: the device tier has room again, the host tier is untouched.
  backend_->deallocate(device_blocks.back(), kBlock, 0);
  device_blocks.pop_back();
  EXPECT_EQ(spilling_->host_tier().stats().bytes_in_use, kBlock);
  EXPECT_EQ(spilling_->device_tier().stats().bytes_in_use, kDeviceCap - kBlock);
  backend_->deallocate(spilled, kBlock, 0);
  EXPECT_EQ(spilling_->host_tier().stats().bytes_in_use, 0u);
  for (void* p : device_blocks) backend_->deallocate(p, kBlock, 0);
  EXPECT_EQ(host_memory_.misuse_count() + device_memory_.misuse_count(), 0u);
}

// No migration: a spilled block stays in host memory; but once device memory is freed, the next
// allocations are the device's again, even while idle host memory is still mapped.
TEST_F(Spill, NewBlocksLandOnTheDeviceOnceItHasRoomAgain) {
  std::vector<void*> device_blocks;
  for (std::size_t i = 0; i < kDeviceCap / kBlock; ++i) device_blocks.push_back(allocate(kBlock));
  void* spilled = allocate(kBlock);
  void* spilled_too = allocate(kBlock);
  ASSERT_TRUE(spilling_->is_spilled(spilled) && spilling_->is_spilled(spilled_too));
  backend_->deallocate(spilled_too, kBlock, 0);  // idle host memory, kept mapped (pinning is slow)
  EXPECT_EQ(host_memory_.bytes_mapped(), 2 * kBlock);
  for (void* p : device_blocks) backend_->deallocate(p, kBlock, 0);
  device_blocks.clear();
  for (std::size_t i = 0; i < kDeviceCap / kBlock; ++i) {
    void* p = allocate(kBlock);
    ASSERT_NE(p, nullptr);
    EXPECT_FALSE(spilling_->is_spilled(p)) << "block " << i << " went to the host while the device had room";
    device_blocks.push_back(p);
  }
  EXPECT_TRUE(spilling_->is_spilled(spilled));  // the live spilled block did not move
  for (void* p : device_blocks) backend_->deallocate(p, kBlock, 0);
  backend_->deallocate(spilled, kBlock, 0);
}

// The router's out-of-memory path gives cached memory back before it spills: that must be the device's
// (what the device needs), never the host's, which would only have to be pinned again.
TEST_F(Spill, ReleasingCachedMemoryGivesBackTheDevicesOnly) {
  std::vector<void*> device_blocks;
  for (std::size_t i = 0; i < kDeviceCap / kBlock; ++i) device_blocks.push_back(allocate(kBlock));
  void* spilled = allocate(kBlock);
  backend_->deallocate(spilled, kBlock, 0);
  backend_->deallocate(device_blocks.back(), kBlock, 0);
  device_blocks.pop_back();
  EXPECT_EQ(backend_->release_cached(), kBlock);
  EXPECT_EQ(device_memory_.bytes_mapped(), kDeviceCap - kBlock);
  EXPECT_EQ(host_memory_.bytes_mapped(), kBlock);
  for (void* p : device_blocks) backend_->deallocate(p, kBlock, 0);
}

// Idle host memory is given back only when the spill cap is in the way of a block.
TEST_F(Spill, IdleHostMemoryIsGivenBackWhenTheSpillCapIsInTheWay) {
  std::vector<void*> device_blocks;
  for (std::size_t i = 0; i < kDeviceCap / kBlock; ++i) device_blocks.push_back(allocate(kBlock));
  // Three spilled blocks fill the cap (96 MiB, one mapping each); the outer two are freed, so 64 MiB
  // is idle but in two pieces, and the cap leaves no room to map a third.
  void* a = backend_->allocate_spilled(kBlock, 0);
  void* b = backend_->allocate_spilled(kBlock, 0);
  void* c = backend_->allocate_spilled(kBlock, 0);
  ASSERT_TRUE(a && b && c);
  backend_->deallocate(a, kBlock, 0);
  backend_->deallocate(c, kBlock, 0);
  EXPECT_EQ(host_memory_.bytes_mapped(), kSpillCap);
  EXPECT_EQ(spilling_->host_tier().allocate(2 * kBlock, 0), nullptr) << "the arena alone cannot serve it";
  void* big = backend_->allocate_spilled(2 * kBlock, 0);
  ASSERT_NE(big, nullptr);
  EXPECT_TRUE(spilling_->is_spilled(big));
  EXPECT_EQ(host_memory_.bytes_mapped(), 3 * kBlock);
  backend_->deallocate(big, 2 * kBlock, 0);
  backend_->deallocate(b, kBlock, 0);
  for (void* p : device_blocks) backend_->deallocate(p, kBlock, 0);
}

TEST_F(Spill, StatisticsDecoratorCountsSpilledBytesInUse) {
  std::vector<void*> device_blocks;
  for (std::size_t i = 0; i < kDeviceCap / kBlock; ++i) device_blocks.push_back(allocate(kBlock));
  void* spilled = backend_->allocate_spilled(1000, 0);
  ASSERT_NE(spilled, nullptr);
  EXPECT_EQ(backend_->stats().bytes_in_use, kDeviceCap + 1000);
  EXPECT_EQ(backend_->stats().peak_bytes_in_use, kDeviceCap + 1000);
  backend_->deallocate(spilled, 1000, 0);
  for (void* p : device_blocks) backend_->deallocate(p, kBlock, 0);
  EXPECT_EQ(backend_->stats().bytes_in_use, 0u);
}

// Without a spill tier (GPUSHIM_SPILL unset), the last resort is nothing: every backend says nullptr.
TEST(SpillOff, BackendsWithoutASpillTierNeverSpill) {
  HostProvider memory;
  LimitedProvider capped(memory, kBlock);
  StatisticsAllocator backend(std::make_unique<VmmArena>(capped, small_arena()));
  void* p = backend.allocate(kBlock, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(backend.allocate(kBlock, 0), nullptr);
  EXPECT_EQ(backend.allocate_spilled(kBlock, 0), nullptr);
  EXPECT_EQ(backend.stats().spilled_allocations, 0u);
  backend.deallocate(p, kBlock, 0);
}

TEST(SpillReport, OutOfMemoryReportSaysWhatWasSpilled) {
  OomReport report;
  report.backend = "tiered";
  report.requested = 64 * MiB;
  report.spill_limit = 8ull << 30;
  report.spilled = 6ull << 30;
  report.spill_reserved = 7ull << 30;
  bool found = false;
  for (const std::string& line : format_oom_report(report))
    if (line.find("spilled to host: live 6.00 GiB, mapped 7.00 GiB of the 8.00 GiB cap") != std::string::npos)
      found = true;
  EXPECT_TRUE(found);
  report.spill_limit = 0;  // no spilling: no such line
  for (const std::string& line : format_oom_report(report)) EXPECT_EQ(line.find("spill"), std::string::npos);
}

TEST(SpillReport, StatsTableGetsOneLinePerSpillingDeviceAndNoneOtherwise) {
  StatsRow row;
  row.backend = "tiered";
  row.allocs = 10;
  EXPECT_EQ(format_stats_table({row}).size(), 2u);  // header + row: unchanged without spilling
  row.spill_limit = 4ull << 30;
  row.spilled_allocs = 3;
  row.peak_spilled = 1ull << 30;
  row.peak_spill_reserved = 3ull << 29;
  const auto lines = format_stats_table({row});
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2], "device 0 spilled to host: 3 blocks, peak live 1.00 GiB, peak mapped 1.50 GiB, cap 4.00 GiB");
}

TEST(HostMemoryForSpill, TheCgroupLimitBoundsThePhysicalMemory) {
  const std::size_t physical = static_cast<std::size_t>(::sysconf(_SC_PHYS_PAGES)) *
                               static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  EXPECT_EQ(host_memory_for_spill(nullptr), physical);
  EXPECT_EQ(host_memory_for_spill("/nonexistent/memory.max"), physical);
  char path[] = "/tmp/gpushim-cgroup-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  auto write = [&](const char* text) {
    std::FILE* f = std::fopen(path, "w");
    std::fputs(text, f);
    std::fclose(f);
  };
  write("max\n");
  EXPECT_EQ(host_memory_for_spill(path), physical);
  write("1073741824\n");
  EXPECT_EQ(host_memory_for_spill(path), std::min<std::size_t>(physical, 1073741824));
  ::unlink(path);
}

}  // namespace
}  // namespace gpushim
