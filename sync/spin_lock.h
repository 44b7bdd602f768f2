// A test-and-test-and-set spin lock for hot-path structures whose critical sections are a few hundred
// instructions at most: the router's tables and the vmm arena. Why not std::mutex: an uncontended
// pthread mutex lock+unlock is ~100 instructions with two locked operations and a function call each way
// (callgrind of bench/router_pair_bench: 6 mutex pairs per alloc+free, ~15% of the router's
// instructions); this is one exchange and one store. Under contention it spins briefly (pause), then
// yields the CPU so a preempted holder can finish: a sleeping futex costs a system call on each side
// and, with 16 threads on the arena, turned contention into collapse (16 threads made 0.1-0.3x the
// pairs of one on the H100) rather than mere serialisation.
// A holder may sit in a driver call now and then (the arena growing or giving back memory: 20-100 us, a
// device synchronize before an unmap): past ~64 yields a waiter sleeps in 50 us steps instead, so such a
// wait costs no core. Short critical sections never get that far.
// Its own folder: the router and the allocators both use it, and neither may include the other's.
#pragma once

#include <sched.h>
#include <time.h>

#include <atomic>

namespace gpushim {

class SpinLock {
 public:
  void lock() noexcept {
    while (locked_.exchange(true, std::memory_order_acquire)) {
      int yields = 0;
      for (int spins = 0; locked_.load(std::memory_order_relaxed);) {
        if (++spins < kSpinsBeforeYield) {
          relax();
        } else if (yields < kYieldsBeforeSleep) {
          sched_yield();
          ++yields;
          spins = 0;
        } else {
          const timespec pause{0, kSleepNanoseconds};
          nanosleep(&pause, nullptr);
          spins = 0;
        }
      }
    }
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }
  // A forked child has one thread: a lock another parent thread held is garbage.
  void reset() noexcept { locked_.store(false, std::memory_order_relaxed); }

 private:
  // ~100 pauses is a few microseconds: far longer than any critical section under this lock.
  static constexpr int kSpinsBeforeYield = 100;
  static constexpr int kYieldsBeforeSleep = 64;
  static constexpr long kSleepNanoseconds = 50 * 1000;
  static void relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }
  std::atomic<bool> locked_{false};
};

}  // namespace gpushim
