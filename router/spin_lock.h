// A test-and-test-and-set spin lock for the router's hot-path tables, whose critical sections are a
// handful of loads and stores, and for the active stream set (router/stream_activity.cpp says why).
// Why not std::mutex: an uncontended pthread mutex lock+unlock is ~100 instructions with two locked
// operations and a function call each way (callgrind of
// bench/router_pair_bench: 6 mutex pairs per alloc+free, ~15% of the router's instructions); this is one
// exchange and one store. Under contention it spins briefly (pause), then yields the CPU so a preempted
// holder can finish: a sleeping futex would cost more than the critical section it protects.
#pragma once

#include <sched.h>

#include <atomic>

#include "allocators/spin_pause.h"

namespace gpushim {

class SpinLock {
 public:
  void lock() noexcept {
    while (locked_.exchange(true, std::memory_order_acquire)) {
      for (int spins = 0; locked_.load(std::memory_order_relaxed);) {
        if (++spins < kSpinsBeforeYield) {
          spin_pause();
        } else {
          sched_yield();
          spins = 0;
        }
      }
    }
  }
  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }
  // A forked child has one thread: a lock another parent thread held is garbage.
  void reset() noexcept { locked_.store(false, std::memory_order_relaxed); }

 private:
  // ~100 pauses is a few microseconds: far longer than any critical section under this lock.
  static constexpr int kSpinsBeforeYield = 100;
  std::atomic<bool> locked_{false};
};

}  // namespace gpushim
