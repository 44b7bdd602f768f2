// A mutex that spins for a moment before it sleeps, for the locks that many threads take for a short
// critical section (the arena's best fit, the thread registry, the fence queue; the active stream set's
// became a spin lock, router/stream_activity.cpp).
// Why not std::mutex: a waiter that finds it held sleeps in the kernel at once, and the holder then pays
// a futex wake at unlock, which lengthens the very section the others wait for. 16 threads with a stream
// each on the H200 spent 45% of their wall-clock time in those sleeps and 9% in the wakes
// (docs/perf-notes.md, eleventh session). The spin is bounded (100 tries, as glibc's adaptive mutex),
// then the waiter sleeps on a futex, so a preempted holder on an oversubscribed machine costs no more
// than a plain mutex.
// Why not glibc's adaptive pthread mutex, which this was: its trylock and unlock are calls that check
// the mutex's type and keep an owner and a user count, ~65 instructions per lock and unlock, twice in
// every large allocate+free pair (the arena's lock; callgrind of the CPU guard, twenty-eighth session). This
// is the same protocol in a word: a compare-and-swap to take it, an exchange to let it go, the kernel
// only when a thread sleeps (Drepper, "Futexes Are Tricky", mutex 3).
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

#include "allocators/spin_pause.h"

namespace gpushim {

class AdaptiveMutex {
 public:
  AdaptiveMutex() noexcept = default;
  AdaptiveMutex(const AdaptiveMutex&) = delete;
  AdaptiveMutex& operator=(const AdaptiveMutex&) = delete;

  void lock() noexcept {
    if (!try_lock()) lock_contended();
  }
  bool try_lock() noexcept {
    std::uint32_t free = kFree;
    return state_.compare_exchange_strong(free, kHeld, std::memory_order_acquire, std::memory_order_relaxed);
  }
  void unlock() noexcept {
    if (state_.exchange(kFree, std::memory_order_release) == kHeldWithSleepers) wake_one();
  }

 private:
  static constexpr std::uint32_t kFree = 0;
  static constexpr std::uint32_t kHeld = 1;
  static constexpr std::uint32_t kHeldWithSleepers = 2;  // held, and a thread may sleep on it
  // ~100 pauses are a few microseconds: longer than the sections under these locks, shorter than a
  // sleep and its wake.
  static constexpr int kSpinsBeforeSleeping = 100;
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                    std::atomic<std::uint32_t>::is_always_lock_free,
                "the futex word is the atomic itself");

  // Out of line: the uncontended lock stays a compare-and-swap in its caller.
  __attribute__((noinline)) void lock_contended() noexcept {
    for (int spins = 0; spins < kSpinsBeforeSleeping; ++spins) {
      spin_pause();
      if (state_.load(std::memory_order_relaxed) == kFree && try_lock()) return;
    }
    // Asleep, a thread marks the word so that the unlock wakes one; it cannot tell whether others
    // sleep, so it marks the word again whenever it takes the lock from here (one spare wake at most).
    while (state_.exchange(kHeldWithSleepers, std::memory_order_acquire) != kFree)
      futex(FUTEX_WAIT_PRIVATE, kHeldWithSleepers);
  }
  __attribute__((noinline)) void wake_one() noexcept { futex(FUTEX_WAKE_PRIVATE, 1); }
  // Private futexes: the word is never shared with another process.
  void futex(int operation, std::uint32_t value) noexcept {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&state_), operation, value, nullptr, nullptr, 0);
  }

  std::atomic<std::uint32_t> state_{kFree};
};

}  // namespace gpushim
