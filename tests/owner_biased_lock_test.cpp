// The owner-biased lock (allocators/owner_biased_lock.h) under load: one owner thread runs millions of
// sections that change plain (non-atomic) data while remote threads keep taking the lock and emptying
// that data. Both barriers: heavy (membarrier) and fenced (the fallback where membarrier is missing,
// forced by the constructor and, in a child, by a seccomp filter that refuses the system call).
// A lock that let the two sides in together shows here as a section seen half done (the pair of plain
// counters unequal), two threads counted inside at once, or increments lost (the totals do not add up).
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "allocators/owner_biased_lock.h"

namespace gpushim {
namespace {

// What the lock guards: plain fields, as a thread cache's counts and slots are.
struct Guarded {
  std::uint64_t first = 0;   // each owner section adds 1 to both, a moment apart
  std::uint64_t second = 0;
  std::uint64_t stack[16] = {};
  std::uint32_t depth = 0;   // the owner pushes and pops; a remote empties it
};

struct HammerResult {
  std::uint64_t owner_sections = 0;
  std::uint64_t remote_sections = 0;
  std::uint64_t torn = 0;      // a side saw the other's section half done
  std::uint64_t overlaps = 0;  // two threads inside at once
  std::uint64_t owner_added = 0;
  std::uint64_t remote_drained = 0;
  std::uint64_t left = 0;
  bool stack_ok = true;
};

// Widens a section so that a thread let in while another is inside has time to see it half done.
void dawdle(int steps) {
  for (volatile int i = 0; i < steps; ++i) {
  }
}
// The owner's sections are short, as a thread cache's are, so its entries (where a broken barrier lets a
// remote in) come often; a remote's are longer, so an owner let in while one runs is caught.
constexpr int kOwnerDawdle = 8;
constexpr int kRemoteDawdle = 200;
// Between a remote's sections: spinning, not yielding, so remotes try often while the owner runs.
constexpr int kRemotePause = 2000;
// 8 MiB of lines the owner stores to before each entry (see hammer()).
constexpr std::size_t kLineWords = 8, kFarLines = std::size_t{1} << 17, kStoresBeforeEntry = 16;

HammerResult hammer(OwnerBiasedLock& lock, std::uint64_t sections, int remotes) {
  Guarded data;
  std::atomic<int> remote_inside{0};
  std::atomic<bool> owner_inside{false};
  std::atomic<bool> owner_done{false};
  std::atomic<std::uint64_t> remote_sections{0}, torn{0}, overlaps{0}, drained{0};
  std::atomic<bool> stack_ok{true};
  HammerResult result;

  // The owner on one CPU, the remotes on another: a broken barrier shows only while both sides truly
  // run at once (left to the scheduler on a two-CPU machine, the remotes often held both).
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  const auto pin_to = [&](std::size_t index) {
    if (cpus.size() < 2) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[index], &one);
    (void)sched_setaffinity(0, sizeof(one), &one);
  };
  cpu_set_t owner_was;
  const bool owner_pinned = sched_getaffinity(0, sizeof(owner_was), &owner_was) == 0;
  if (owner_pinned) pin_to(0);

  std::vector<std::thread> threads;
  for (int r = 0; r < remotes; ++r) {
    threads.emplace_back([&] {
      pin_to(1);
      while (!owner_done.load(std::memory_order_acquire)) {
        lock.remote_lock();
        if (remote_inside.fetch_add(1, std::memory_order_relaxed) != 0 || owner_inside.load(std::memory_order_relaxed))
          overlaps.fetch_add(1, std::memory_order_relaxed);
        if (data.first != data.second) torn.fetch_add(1, std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < data.depth; ++i)
          if (data.stack[i] != i + 1) stack_ok.store(false, std::memory_order_relaxed);
        drained.fetch_add(data.first, std::memory_order_relaxed);
        data.first = 0;
        dawdle(kRemoteDawdle);
        data.second = 0;
        data.depth = 0;
        if (owner_inside.load(std::memory_order_relaxed)) overlaps.fetch_add(1, std::memory_order_relaxed);
        remote_inside.fetch_sub(1, std::memory_order_relaxed);
        remote_sections.fetch_add(1, std::memory_order_relaxed);
        lock.remote_unlock();
        dawdle(kRemotePause);
      }
    });
  }
  // The owner stops after `sections`, and not before the remotes went in often enough to matter.
  constexpr std::uint64_t kMinRemoteSections = 20000;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  // Stores to lines not in the cache just before each entry: x86 commits stores in order, so the
  // owner's store of busy waits behind them while its load of the remote's flag goes ahead. That is the
  // reordering the heavy barrier exists for; this makes its window wide enough for a broken barrier to
  // show within a second (without it, a run that dropped the barrier passed one time in two).
  std::vector<std::uint64_t> far(kFarLines * kLineWords);
  std::uint64_t i = 0;
  for (;; ++i) {
    if (i >= sections && (remote_sections.load(std::memory_order_relaxed) >= kMinRemoteSections ||
                          std::chrono::steady_clock::now() > deadline))
      break;
    for (std::size_t k = 0; k < kStoresBeforeEntry; ++k)
      far[((i * kStoresBeforeEntry + k) * 97 % kFarLines) * kLineWords] = i;
    lock.owner_lock();
    // No locked instruction in the owner's section: one would drain its store buffer right after the
    // entry and hide the reordering a missing heavy barrier lets through. The remote counts overlaps.
    owner_inside.store(true, std::memory_order_relaxed);
    if (data.first != data.second) torn.fetch_add(1, std::memory_order_relaxed);
    data.first = data.first + 1;
    dawdle(kOwnerDawdle);
    data.second = data.second + 1;
    if (data.depth < 16 && (i & 1) == 0) {
      data.stack[data.depth] = data.depth + 1;
      data.depth = data.depth + 1;
    } else if (data.depth > 0) {
      data.depth = data.depth - 1;
    }
    owner_inside.store(false, std::memory_order_relaxed);
    lock.owner_unlock();
  }
  owner_done.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();
  if (owner_pinned) (void)sched_setaffinity(0, sizeof(owner_was), &owner_was);
  result.owner_sections = i;
  result.owner_added = i;
  result.remote_sections = remote_sections.load();
  result.torn = torn.load();
  result.overlaps = overlaps.load();
  result.remote_drained = drained.load();
  result.left = data.first;
  result.stack_ok = stack_ok.load();
  return result;
}

void expect_mutual_exclusion(OwnerBiasedLock& lock) {
  const HammerResult r = hammer(lock, 2'000'000, 2);
  std::printf("owner sections %llu, remote sections %llu\n", static_cast<unsigned long long>(r.owner_sections),
              static_cast<unsigned long long>(r.remote_sections));
  EXPECT_GT(r.remote_sections, 0u) << "no remote ever went in: the test proved nothing";
  EXPECT_EQ(r.overlaps, 0u) << "owner and remote inside at once";
  EXPECT_EQ(r.torn, 0u) << "a section seen half done";
  EXPECT_TRUE(r.stack_ok);
  EXPECT_EQ(r.owner_added, r.remote_drained + r.left) << "increments lost";
}

TEST(OwnerBiasedLock, HeavyBarrierKeepsTheOwnerOutWhileARemoteHoldsIt) {
  OwnerBiasedLock lock(OwnerBiasedLock::Barrier::heavy);
  if (lock.barrier() != OwnerBiasedLock::Barrier::heavy)
    GTEST_SKIP() << "membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) is unavailable here (or under "
                    "ThreadSanitizer): the fenced test covers the lock";
  expect_mutual_exclusion(lock);
}

TEST(OwnerBiasedLock, FencedFallbackKeepsTheOwnerOutWhileARemoteHoldsIt) {
  OwnerBiasedLock lock(OwnerBiasedLock::Barrier::fenced);
  ASSERT_EQ(lock.barrier(), OwnerBiasedLock::Barrier::fenced);
  expect_mutual_exclusion(lock);
}

TEST(OwnerBiasedLock, TheDefaultIsHeavyExactlyWhereTheProcessRegistered) {
  OwnerBiasedLock lock;
  EXPECT_EQ(lock.barrier() == OwnerBiasedLock::Barrier::heavy, OwnerBiasedLock::heavy_barrier_registered());
}

// A remote that finds the owner inside waits for it (yielding), and the owner, once out, waits for the
// remote to finish before it goes in again.
TEST(OwnerBiasedLock, EachSideWaitsForTheOtherToLeave) {
  for (auto barrier : {OwnerBiasedLock::Barrier::heavy, OwnerBiasedLock::Barrier::fenced}) {
    OwnerBiasedLock lock(barrier);
    std::atomic<int> stage{0};
    lock.owner_lock();
    std::thread remote([&] {
      stage.store(1);
      lock.remote_lock();
      stage.store(2);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      stage.store(3);
      lock.remote_unlock();
    });
    while (stage.load() < 1) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(stage.load(), 1) << "the remote went in while the owner was inside";
    lock.owner_unlock();
    while (stage.load() < 2) std::this_thread::yield();
    lock.owner_lock();
    EXPECT_EQ(stage.load(), 3) << "the owner went in while the remote was inside";
    lock.owner_unlock();
    remote.join();
  }
}

// A forked child has one thread: a lock its parent's other threads held is released there, and works.
TEST(OwnerBiasedLock, AForkedChildFindsItReleased) {
  OwnerBiasedLock lock;
  std::atomic<bool> held{false}, leave{false};
  std::thread other([&] {
    lock.remote_lock();
    held.store(true);
    while (!leave.load()) std::this_thread::yield();
    lock.remote_unlock();
  });
  while (!held.load()) std::this_thread::yield();
  const pid_t child = fork();
  if (child == 0) {
    alarm(10);  // a lock left held would hang the child: fail instead
    OwnerBiasedLock::register_again_after_fork();
    lock.reset_after_fork();
    lock.owner_lock();
    lock.owner_unlock();
    lock.remote_lock();
    lock.remote_unlock();
    _exit(0);
  }
  leave.store(true);
  other.join();
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// Where seccomp refuses membarrier (as container runtimes' filters do), a lock falls back to fenced and
// still excludes: the child refuses the system call, then registers again as a forked child does; a
// heavy lock made before the fork becomes fenced at its reset, and a new lock is fenced from the start.
TEST(OwnerBiasedLock, WhereSeccompRefusesMembarrierLocksFallBackToFenced) {
  OwnerBiasedLock made_before;
  const pid_t child = fork();
  if (child == 0) {
    alarm(60);
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_membarrier, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog program{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0)
      _exit(77);
    OwnerBiasedLock::register_again_after_fork();
    made_before.reset_after_fork();
    if (made_before.barrier() != OwnerBiasedLock::Barrier::fenced) _exit(2);
    if (OwnerBiasedLock::heavy_barrier_registered()) _exit(3);
    OwnerBiasedLock lock;
    if (lock.barrier() != OwnerBiasedLock::Barrier::fenced) _exit(4);
    const HammerResult r = hammer(lock, 200'000, 2);
    if (r.remote_sections == 0 || r.overlaps != 0 || r.torn != 0 || !r.stack_ok ||
        r.owner_added != r.remote_drained + r.left)
      _exit(5);
    _exit(0);
  }
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "this process may not install a seccomp filter";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: the lock made before the fork stayed heavy; 3: registration "
                                       "reported working; 4: a new lock was heavy; 5: the fenced lock let "
                                       "both sides in";
}

}  // namespace
}  // namespace gpushim
