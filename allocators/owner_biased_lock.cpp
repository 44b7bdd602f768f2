#include "allocators/owner_biased_lock.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace gpushim {
namespace {

#if defined(__SANITIZE_THREAD__)
constexpr bool kSanitizingThreads = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kSanitizingThreads = true;
#else
constexpr bool kSanitizingThreads = false;
#endif
#else
constexpr bool kSanitizingThreads = false;
#endif

long membarrier(int command) noexcept {
#ifdef SYS_membarrier
  return syscall(SYS_membarrier, command, 0, 0);
#else
  (void)command;
  return -1;
#endif
}

bool register_heavy_barrier() noexcept {
  if (kSanitizingThreads) return false;
  return membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
}

// Set once by the first lock made; again in a forked child (register_again_after_fork), one thread left.
std::atomic<int> g_registration{-1};  // -1: not tried, 0: unavailable, 1: registered

}  // namespace

bool OwnerBiasedLock::heavy_barrier_registered() noexcept {
  int state = g_registration.load(std::memory_order_acquire);
  if (state < 0) {
    // Registration is idempotent: two threads racing here both register and agree.
    state = register_heavy_barrier() ? 1 : 0;
    g_registration.store(state, std::memory_order_release);
  }
  return state == 1;
}

void OwnerBiasedLock::owner_lock_slow() noexcept {
  do {
    while (remote_wants_.load(std::memory_order_acquire)) sched_yield();  // a remote preempted in its section
  } while (!owner_try_enter());
}

void OwnerBiasedLock::remote_lock() noexcept {
  while (remote_held_.exchange(true, std::memory_order_acquire))
    while (remote_held_.load(std::memory_order_relaxed)) sched_yield();
  remote_wants_.store(true, std::memory_order_seq_cst);
  // Registered, the command cannot fail: membarrier(2) answers EPERM only to a process that did not
  // register, and registration lasts until exec (a forked child keeps it: register_again_after_fork).
  if (heavy_) (void)membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  while (busy_.load(std::memory_order_seq_cst)) sched_yield();  // the owner's section, begun before the barrier
}

void OwnerBiasedLock::reset_after_fork() noexcept {
  busy_.store(false, std::memory_order_relaxed);
  remote_wants_.store(false, std::memory_order_relaxed);
  remote_held_.store(false, std::memory_order_relaxed);
  heavy_ = heavy_ && g_registration.load(std::memory_order_relaxed) == 1;
}

void OwnerBiasedLock::register_again_after_fork() noexcept {
  if (g_registration.load(std::memory_order_relaxed) == 1 && !register_heavy_barrier())
    g_registration.store(0, std::memory_order_relaxed);
}

}  // namespace gpushim
