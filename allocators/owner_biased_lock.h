// A lock for data one thread (its owner) uses on almost every call and other threads need rarely: the
// owner takes it with plain stores and no locked instruction; a remote thread pays instead, with one
// membarrier(2) system call. The asymmetric Dekker pattern of folly's asymmetricLightBarrier /
// asymmetricHeavyBarrier and of liburcu's membarrier flavour. Used by the per-thread caches
// (allocators/thread_cache_allocator.h), whose owner takes its cache's lock on every allocate and free
// and another thread only to empty it (out of memory, a flush of parked blocks).
//
// Why: an uncontended locked exchange still drains the store buffer, ~20 cycles each; two per
// cudaMalloc+cudaFree pair (docs/perf-notes.md, "The owner's lock without a locked instruction").
//
// The protocol, two flags:
//   owner_lock():   busy = 1 (plain store); compiler barrier; if remote_wants: busy = 0, wait, retry.
//   owner_unlock(): busy = 0 (release store).
//   remote_lock():  (one remote at a time) remote_wants = 1; heavy barrier; wait while busy.
//   remote_unlock(): remote_wants = 0 (release store).
// Why the owner is never inside its section while a remote is: the heavy barrier,
// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), returns only after every thread of the process that was
// running has executed a full memory barrier (an interrupt on its CPU: instructions before that point have
// completed and their stores are globally visible, those after it have not begun) and any thread that was
// not running will pass a context switch, itself a full barrier, before it runs again. Call that point P
// in the owner's instruction stream; the remote's store remote_wants = 1 is globally visible before P
// (the system call begins with a full barrier). Take the owner's check of remote_wants in one entry:
//   - it comes after P: it reads 1, so the owner backs off without touching the data and waits; or it
//     reads 0 from this remote's own unlock (only the remote holding the lock writes the flag), whose
//     release store makes the remote's section happen before the owner's;
//   - it comes before P: its store busy = 1 precedes it in program order, and the compiler barrier keeps
//     it there, so the store is before P too and the remote, reading busy after the system call
//     returned, reads 1 or a later store of the owner. It waits until it reads 0: the owner's unlock of
//     that entry or a later store, each a release store after the section's writes, so the remote sees
//     them all (acquire load).
// Entries that began before P thus end before the remote goes in, and entries after P wait for it: the
// remote's release store of remote_wants = 0 publishes its writes to the owner's acquire load of it.
// Neither side can starve the other for good: the remote waits only for sections that began before P
// (a few loads and stores), the owner only while one remote holds the lock; both wait yielding the CPU,
// so a preempted peer gets to run and finish.
//
// Where membarrier is missing (a kernel before 4.14, or seccomp filters in a container answer ENOSYS or
// EPERM; under ThreadSanitizer too, which cannot see the system call's ordering and would report the
// owner's plain sections as races), the owner instead stores busy with a seq_cst exchange and reads
// remote_wants seq_cst, and the remote does the same with its flag: the ordinary Dekker, correct by
// the single total order of seq_cst operations. The choice is made once per lock, at construction (a
// branch on a member the owner reads with the flags), from a process-wide registration done at the
// first lock made (allocators/owner_biased_lock.cpp).
//
// The owner must be one thread for the lock's life; a thread may be remote to its own lock only outside
// its own section. A thread that exits hands its data over with neither side of the lock: it must first
// make its data unreachable to remotes (the thread caches unlink it under the list's mutex that every
// remote holds while it locks a cache).
#pragma once

#include <sched.h>

#include <atomic>

namespace gpushim {

class OwnerBiasedLock {
 public:
  enum class Barrier {
    heavy,   // the owner's plain stores, the remote's membarrier (where the process could register it)
    fenced,  // the owner's seq_cst exchange: no system call, a locked instruction per owner entry
  };
  // heavy where the process registered membarrier's private expedited command, else fenced.
  OwnerBiasedLock() noexcept : heavy_(heavy_barrier_registered()) {}
  // For tests: the fenced mode where membarrier works too.
  explicit OwnerBiasedLock(Barrier barrier) noexcept
      : heavy_(barrier == Barrier::heavy && heavy_barrier_registered()) {}
  OwnerBiasedLock(const OwnerBiasedLock&) = delete;
  OwnerBiasedLock& operator=(const OwnerBiasedLock&) = delete;

  Barrier barrier() const noexcept { return heavy_ ? Barrier::heavy : Barrier::fenced; }

  // Only the owner thread. Uncontended (no remote): a store, a load and a branch, no locked instruction.
  void owner_lock() noexcept {
    if (owner_try_enter()) return;
    owner_lock_slow();
  }
  void owner_unlock() noexcept { busy_.store(false, std::memory_order_release); }

  // Any thread but the owner inside its section. A system call (heavy) and a wait for the owner's section.
  void remote_lock() noexcept;
  void remote_unlock() noexcept {
    remote_wants_.store(false, std::memory_order_release);
    remote_held_.store(false, std::memory_order_release);
  }

  // In a forked child (one thread left): whatever the parent's other threads held is released, and the
  // lock falls back to fenced if register_again_after_fork() found the registration gone.
  void reset_after_fork() noexcept;
  // In a forked child, before its locks' reset_after_fork(): registers again (a no-op where the kernel
  // kept the parent's registration, as Linux does; a registration a kernel did not keep would leave every
  // remote's membarrier failing with EPERM).
  static void register_again_after_fork() noexcept;

  // Registers the process for membarrier's private expedited command, once (the first call; a system
  // call), and says whether it worked; false under ThreadSanitizer.
  static bool heavy_barrier_registered() noexcept;

 private:
  bool owner_try_enter() noexcept {
    // The heavy mode and no remote laid out as the straight line (the other cases jump).
    if (__builtin_expect(heavy_, true)) {
      busy_.store(true, std::memory_order_relaxed);
      // Compiler barrier only: the remote's membarrier orders the store before the load (see above).
      std::atomic_signal_fence(std::memory_order_seq_cst);
      if (__builtin_expect(!remote_wants_.load(std::memory_order_acquire), true)) return true;
    } else {
      busy_.exchange(true, std::memory_order_seq_cst);
      if (!remote_wants_.load(std::memory_order_seq_cst)) return true;
    }
    busy_.store(false, std::memory_order_release);  // backed off: publishes the sections before this one
    return false;
  }
  void owner_lock_slow() noexcept;

  std::atomic<bool> busy_{false};          // the owner is in its section (or checking whether it may)
  std::atomic<bool> remote_wants_{false};  // a remote holds or is taking the lock
  std::atomic<bool> remote_held_{false};   // one remote at a time
  bool heavy_;  // Barrier::heavy; changed only by reset_after_fork, when no other thread exists
};

}  // namespace gpushim
