#include "providers/host_provider.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace gpushim {
namespace {

constexpr std::size_t kGranule = std::size_t{64} << 10;

char* as_bytes(void* p) { return static_cast<char*>(p); }

TEST(HostProvider, DefaultGranularityIsTheH100s) {
  HostProvider provider;
  EXPECT_EQ(provider.granularity(), std::size_t{2} << 20);
}

TEST(HostProvider, ReservationIsAlignedToTheGranularityAndMapMakesItWritable) {
  HostProvider provider(kGranule);
  void* base = provider.reserve(16 * kGranule);
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(base) % kGranule, 0u);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  ASSERT_TRUE(provider.map(as_bytes(base) + kGranule, 2 * kGranule));
  EXPECT_EQ(provider.bytes_mapped(), 2 * kGranule);
  std::memset(as_bytes(base) + kGranule, 0xab, 2 * kGranule);
  provider.unmap(as_bytes(base) + kGranule, 2 * kGranule);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  // Physical pages really went back: mapped again, the memory reads as fresh zeroes.
  ASSERT_TRUE(provider.map(as_bytes(base) + kGranule, 2 * kGranule));
  EXPECT_EQ(as_bytes(base)[kGranule], 0);
  provider.unmap(as_bytes(base) + kGranule, 2 * kGranule);
  provider.release_reservation(base, 16 * kGranule);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(HostProvider, BreachesOfTheDriverRulesFailAndAreCounted) {
  HostProvider provider(kGranule);
  void* base = provider.reserve(8 * kGranule);
  ASSERT_NE(base, nullptr);
  EXPECT_FALSE(provider.map(as_bytes(base) + 256, kGranule));           // unaligned address
  EXPECT_FALSE(provider.map(base, kGranule + 4096));                    // unaligned size
  EXPECT_FALSE(provider.map(as_bytes(base) + 7 * kGranule, 2 * kGranule));  // past the reservation
  ASSERT_TRUE(provider.map(base, 2 * kGranule));
  EXPECT_FALSE(provider.map(as_bytes(base) + kGranule, kGranule));      // over a mapping
  std::size_t before = provider.misuse_count();
  EXPECT_EQ(before, 4u);
  provider.unmap(base, kGranule);  // half of a mapping: cuMemUnmap would refuse
  EXPECT_EQ(provider.misuse_count(), before + 1);
  EXPECT_EQ(provider.bytes_mapped(), 2 * kGranule);
  provider.release_reservation(base, 8 * kGranule);  // still mapped
  EXPECT_EQ(provider.misuse_count(), before + 2);
  provider.unmap(base, 2 * kGranule);
  provider.release_reservation(base, 8 * kGranule);
  EXPECT_EQ(provider.misuse_count(), before + 2);
}

TEST(HostProvider, PhysicalCapRefusesMapsPastIt) {
  HostProvider provider(kGranule, 3 * kGranule);
  void* base = provider.reserve(8 * kGranule);
  ASSERT_NE(base, nullptr);
  ASSERT_TRUE(provider.map(base, 2 * kGranule));
  EXPECT_FALSE(provider.map(as_bytes(base) + 2 * kGranule, 2 * kGranule));
  ASSERT_TRUE(provider.map(as_bytes(base) + 2 * kGranule, kGranule));
  EXPECT_FALSE(provider.map(as_bytes(base) + 3 * kGranule, kGranule));
  provider.unmap(base, 2 * kGranule);
  EXPECT_TRUE(provider.map(as_bytes(base) + 3 * kGranule, kGranule));
  EXPECT_EQ(provider.bytes_mapped(), 2 * kGranule);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(HostProvider, ConcurrentMapsRespectTheCapAndKeepCounts) {
  constexpr int kThreads = 8;
  constexpr std::size_t kCapGranules = 20;
  HostProvider provider(kGranule, kCapGranules * kGranule);
  constexpr std::size_t kSlots = 64;
  void* base = provider.reserve(kSlots * kGranule);
  ASSERT_NE(base, nullptr);
  std::vector<std::thread> threads;
  std::atomic<bool> over_cap{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 300; ++round) {
        for (std::size_t slot = t; slot < kSlots; slot += kThreads) {
          char* addr = as_bytes(base) + slot * kGranule;
          if (provider.map(addr, kGranule)) {
            if (provider.bytes_mapped() > kCapGranules * kGranule) over_cap = true;
            addr[0] = 1;
            provider.unmap(addr, kGranule);
          }
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_FALSE(over_cap.load());
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
  EXPECT_EQ(provider.map_calls(), std::size_t{300} * kSlots);
}

}  // namespace
}  // namespace gpushim
