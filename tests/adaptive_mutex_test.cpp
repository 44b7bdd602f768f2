// allocators/adaptive_mutex.h: the spin-then-sleep mutex of the arena, the fence queue and the thread
// registry.
#include "allocators/adaptive_mutex.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace gpushim {
namespace {

using namespace std::chrono_literals;

TEST(AdaptiveMutex, TryLockFailsWhileHeldAndSucceedsOnceReleased) {
  AdaptiveMutex lock;
  ASSERT_TRUE(lock.try_lock());
  EXPECT_FALSE(lock.try_lock());
  std::thread other([&] { EXPECT_FALSE(lock.try_lock()); });
  other.join();
  lock.unlock();
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();
}

// A waiter that outlasts its spin sleeps in the kernel; the unlock must wake it. Holders here stay in
// their sections far longer than the spin (a sleep of 200 us), so every waiter goes to sleep, and more
// threads than this machine has cores take turns. No increment may be lost, and the run must end: a lost
// wake-up leaves a thread asleep for good, which the deadline turns into a failure instead of a hang.
TEST(AdaptiveMutex, SleepingWaitersAreWokenAndSectionsExcludeEachOther) {
  AdaptiveMutex lock;
  long counter = 0;  // plain: only ever touched under the lock
  constexpr int kThreads = 8;
  constexpr int kAdds = 4000;
  auto run = std::async(std::launch::async, [&] {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kAdds; ++i) {
          std::lock_guard<AdaptiveMutex> guard(lock);
          ++counter;
          if ((i + t) % 400 == 0) std::this_thread::sleep_for(200us);  // the others outlast their spin
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
  });
  if (run.wait_for(60s) != std::future_status::ready) {
    // The asleep threads cannot be joined, and the future's destructor would wait for them.
    std::fprintf(stderr, "AdaptiveMutex: a waiter was never woken (60 s)\n");
    std::_Exit(1);
  }
  EXPECT_EQ(counter, long{kThreads} * kAdds);
}

}  // namespace
}  // namespace gpushim
