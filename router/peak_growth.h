// Whether an allocation that found the backend at its peak, while freed blocks waited for fences, grows
// the backend at once or waits for the fences (router/out_of_memory.cpp, allocate_without_new_peak).
//
// A wait keeps the peak; a growth buys time with a block of memory. Growing pays only where the waits
// take the program's time: a stream that holds its fences for long (every wait then runs its full
// 50 ms), or a thread that meets the peak at every allocation. Where the waits are short and rare,
// growth buys nothing, and where the CPU runs ahead of the GPU it never stops: a bigger peak only lets
// more blocks wait. One thread freeing and allocating 1 GiB with a stream grew a block per 128 misses
// for as long as it ran (5 GiB after 2.5 s for one live block), while waits served 99% of its misses;
// 16 threads at 16 MiB held 7.7 GiB where 5.5 GiB served them within 4% of the rate (H200, twenty-third
// and twenty-fourth sessions, docs/perf-notes.md).
//
// So an allocation grows at once only on its turn (one miss in peak_misses_per_growth, counted over the
// device) and only when its thread has recently spent at least kGrowWhenWaitShare of its time waiting
// at the peak. The share is the thread's own: 16 threads that each wait 3% of the time lose 3% of their
// pairs, not half. It decays with a half-life of kWaitHalfLifeNs: the rule follows what the thread does
// now, not what it did an hour ago.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace gpushim::router {

// Misses per growth turn: every 8th up to 64 MiB, then one per block / 8 MiB (a wait costs the same
// at any size, a growth costs the whole block).
std::uint32_t peak_misses_per_growth(std::size_t block_size) noexcept;

// One thread's recent waits at the peak. Its owner's only: no lock, no shared cache line.
class RecentWaits {
 public:
  static constexpr std::uint64_t kWaitHalfLifeNs = 100'000'000;  // 100 ms

  // A wait at the peak of `ns`, ending at `now_ns` (diagnostics/monotonic_clock.h), served or not.
  void waited(std::uint64_t ns, std::uint64_t now_ns) noexcept;
  // The share of the recent time spent waiting at `now_ns`: 0 to 1.
  double share(std::uint64_t now_ns) noexcept;

 private:
  void decay_to(std::uint64_t now_ns) noexcept;

  double decayed_wait_ns_ = 0;  // the waits, each weighed by 2^(-its age / kWaitHalfLifeNs)
  std::uint64_t decayed_at_ns_ = 0;
};

class PeakGrowth {
 public:
  // Waits that take this share of a thread's recent time make growth pay.
  static constexpr double kGrowWhenWaitShare = 1.0 / 4;

  // One allocation at the peak that neither free memory nor other threads' returned blocks could serve,
  // at `now_ns`, by a thread whose waits are `waits` (nullptr: a thread without state, which waits).
  // True: grow at once rather than wait.
  bool grow_now(std::size_t block_size, RecentWaits* waits, std::uint64_t now_ns) noexcept;

 private:
  std::atomic<std::uint32_t> misses_{0};
};

}  // namespace gpushim::router
