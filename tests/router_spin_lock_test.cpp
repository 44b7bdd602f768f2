// router/spin_lock.h: the spin lock of the router's hot-path tables and of the active stream set.
#include "router/spin_lock.h"

#include <gtest/gtest.h>

#include <mutex>
#include <thread>
#include <vector>

namespace gpushim {
namespace {

TEST(SpinLock, TryLockFailsWhileHeldAndSucceedsOnceReleased) {
  SpinLock lock;
  ASSERT_TRUE(lock.try_lock());
  EXPECT_FALSE(lock.try_lock());
  lock.unlock();
  EXPECT_TRUE(lock.try_lock());
  lock.unlock();
  std::unique_lock<SpinLock> guard(lock, std::try_to_lock);
  EXPECT_TRUE(guard.owns_lock());
  std::thread other([&] { EXPECT_FALSE(lock.try_lock()); });
  other.join();
}

// Threads that add under the lock, by lock() and by try_lock(), lose no increment: the sections exclude
// each other.
TEST(SpinLock, SectionsExcludeEachOther) {
  SpinLock lock;
  long counter = 0;  // plain: only ever touched under the lock
  constexpr int kThreads = 8;
  constexpr int kAdds = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kAdds; ++i) {
        if (t % 2 == 0) {
          std::lock_guard<SpinLock> guard(lock);
          ++counter;
        } else {
          while (!lock.try_lock()) std::this_thread::yield();
          ++counter;
          lock.unlock();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(counter, long{kThreads} * kAdds);
}

}  // namespace
}  // namespace gpushim
