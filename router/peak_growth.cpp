// When an allocation at the peak grows at once (router/peak_growth.h).
#include "router/peak_growth.h"

#include <algorithm>
#include <cmath>

namespace gpushim::router {
namespace {

// Why 8: 16 threads with a stream each spent 3-40 us a pair waiting when no miss grew (H200); with every
// 8th growing, the peak rises a block at a time until it holds the blocks in flight.
constexpr std::uint32_t kPeakMissesPerGrowth = 8;
// At 1 GiB, every 8th miss growing made one thread with a stream hold 8 GiB for its 1 GiB block, and 16
// threads 41 GiB for 16 (H200, twenty-third session): on average no more than this many bytes grow per
// allocation that found the peak.
constexpr std::size_t kBytesGrownPerPeakMiss = std::size_t{8} << 20;
// The turn's count is a uint32_t.
constexpr std::size_t kMostMissesPerGrowth = std::size_t{1} << 20;

}  // namespace

std::uint32_t peak_misses_per_growth(std::size_t block_size) noexcept {
  return static_cast<std::uint32_t>(
      std::clamp<std::size_t>(block_size / kBytesGrownPerPeakMiss, kPeakMissesPerGrowth, kMostMissesPerGrowth));
}

void RecentWaits::decay_to(std::uint64_t now_ns) noexcept {
  if (now_ns <= decayed_at_ns_) return;
  decayed_wait_ns_ *= std::exp2(-static_cast<double>(now_ns - decayed_at_ns_) / kWaitHalfLifeNs);
  decayed_at_ns_ = now_ns;
}

void RecentWaits::waited(std::uint64_t ns, std::uint64_t now_ns) noexcept {
  decay_to(now_ns);
  decayed_wait_ns_ += static_cast<double>(ns);
}

double RecentWaits::share(std::uint64_t now_ns) noexcept {
  decay_to(now_ns);
  // Waiting all the time decays to half-life / ln 2.
  return decayed_wait_ns_ * std::log(2.0) / kWaitHalfLifeNs;
}

bool PeakGrowth::grow_now(std::size_t block_size, RecentWaits* waits, std::uint64_t now_ns) noexcept {
  const std::uint32_t per_growth = peak_misses_per_growth(block_size);
  if (misses_.fetch_add(1, std::memory_order_relaxed) % per_growth != per_growth - 1) return false;
  return waits && waits->share(now_ns) >= kGrowWhenWaitShare;
}

}  // namespace gpushim::router
