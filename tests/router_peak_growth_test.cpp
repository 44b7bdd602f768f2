// When an allocation at the peak grows at once rather than wait for fences (router/peak_growth.h),
// with the clock given by the test.
#include "router/peak_growth.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace gpushim::router {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::uint64_t kMs = 1'000'000;
constexpr std::uint64_t kUs = 1'000;

TEST(PeakMissesPerGrowth, EveryEighthUpTo64MiBThenOnePerBlockOver8MiB) {
  EXPECT_EQ(peak_misses_per_growth(256), 8u);
  EXPECT_EQ(peak_misses_per_growth(64 * kMiB), 8u);
  EXPECT_EQ(peak_misses_per_growth(256 * kMiB), 32u);
  EXPECT_EQ(peak_misses_per_growth(1024 * kMiB), 128u);
  EXPECT_EQ(peak_misses_per_growth(std::size_t{1} << 50), 1u << 20) << "the count is a uint32_t";
}

// One thread's misses `every` apart, each followed by a wait of `wait` unless it grew; returns the misses
// (1-based) that grew.
std::vector<int> grown_misses(PeakGrowth& rule, RecentWaits& waits, std::size_t block, int misses,
                              std::uint64_t every, std::uint64_t wait, std::uint64_t* now) {
  std::vector<int> grew;
  for (int i = 1; i <= misses; ++i) {
    *now += every;
    if (rule.grow_now(block, &waits, *now)) {
      grew.push_back(i);
      continue;
    }
    *now += wait;
    waits.waited(wait, *now);
  }
  return grew;
}

// A thread whose waits fill most of its time (a stream that holds its fences) grows on every turn of
// the count: the 8th miss, the 16th, ...
TEST(PeakGrowth, WaitsThatTakeMostOfTheTimeGrowOnEveryTurn) {
  PeakGrowth rule;
  RecentWaits waits;
  std::uint64_t now = 1'000 * kMs;
  const std::vector<int> grew = grown_misses(rule, waits, 16 * kMiB, 32, 100 * kUs, 10 * kMs, &now);
  EXPECT_EQ(grew, (std::vector<int>{8, 16, 24, 32}));
}

// One thread at 1 GiB on the H200: its waits served 99% of its misses and took a small share of its
// time. Growing then buys nothing: no turn grows.
TEST(PeakGrowth, ShortRareWaitsNeverGrow) {
  PeakGrowth rule;
  RecentWaits waits;
  std::uint64_t now = 1'000 * kMs;
  // 10% of the time: 500 us waits 5 ms apart, over 8 turns of the count at 64 MiB.
  EXPECT_TRUE(grown_misses(rule, waits, 64 * kMiB, 64, 5 * kMs, 500 * kUs, &now).empty());
  EXPECT_NEAR(waits.share(now), 0.1, 0.02);
}

// The share is the thread's own: 16 threads that each wait a tenth of the time do not add up to a
// reason to grow, and one thread that waits most of the time grows on the device's next turn.
TEST(PeakGrowth, EachThreadWeighsItsOwnWaits) {
  PeakGrowth rule;
  RecentWaits light[16], heavy;
  std::uint64_t now = 1'000 * kMs;
  for (int round = 0; round < 1'000; ++round) {  // 1 s: ten half-lives
    now += kMs;
    for (RecentWaits& thread : light) thread.waited(100 * kUs, now);
    heavy.waited(900 * kUs, now);
  }
  int grew = 0;
  for (int i = 0; i < 64; ++i) grew += rule.grow_now(kMiB, &light[i % 16], now);
  EXPECT_EQ(grew, 0);
  for (int i = 0; i < 8; ++i) grew += rule.grow_now(kMiB, &heavy, now);
  EXPECT_EQ(grew, 1);
  EXPECT_FALSE(rule.grow_now(kMiB, nullptr, now)) << "a thread without state grew off its turn";
}

// A steady share converges to itself, and it fades once the waits stop: the rule follows what the
// thread does now.
TEST(PeakGrowth, TheShareFollowsTheRecentWaits) {
  PeakGrowth rule;
  RecentWaits waits;
  std::uint64_t now = 1'000 * kMs;
  for (int i = 0; i < 2'000; ++i) {  // 2 s at half the time waiting
    now += kMs;
    waits.waited(kMs / 2, now);
  }
  EXPECT_NEAR(waits.share(now), 0.5, 0.02);
  now += 1'000 * kMs;  // a quiet second: ten half-lives
  EXPECT_LT(waits.share(now), 0.001);
  int grew = 0;
  for (int i = 0; i < 64; ++i) grew += rule.grow_now(kMiB, &waits, now);
  EXPECT_EQ(grew, 0) << "waits of long ago still made allocations grow";
}

// A time no later than the last one seen neither decays the waits nor loses them.
TEST(PeakGrowth, AnEarlierClockReadLosesNothing) {
  RecentWaits waits;
  waits.waited(10 * kMs, 2'000 * kMs);
  waits.waited(10 * kMs, 1'999 * kMs);
  EXPECT_NEAR(waits.share(2'000 * kMs), 20.0 * 0.693 / 100, 0.001);
}

}  // namespace
}  // namespace gpushim::router
