// A mutex that spins for a moment before it sleeps: glibc's adaptive type (PTHREAD_MUTEX_ADAPTIVE_NP),
// for the locks that many threads take for a short critical section (the arena's best fit, the thread
// registry, the fence queue; the active stream set's became a spin lock, router/stream_activity.cpp).
// Why not std::mutex: a waiter that finds it held sleeps in the kernel at once, and the holder then pays
// a futex wake at unlock, which lengthens the very section the others wait for. 16 threads with a stream
// each on the H200 spent 45% of their wall-clock time in those sleeps and 9% in the wakes
// (docs/perf-notes.md, eleventh session). The spin is bounded (glibc's mutex_spin_count tunable, 100
// tries by default), then the waiter sleeps as before, so a preempted holder on an oversubscribed
// machine costs no more than a plain mutex.
#pragma once

#include <pthread.h>

namespace gpushim {

class AdaptiveMutex {
 public:
  AdaptiveMutex() noexcept = default;
  AdaptiveMutex(const AdaptiveMutex&) = delete;
  AdaptiveMutex& operator=(const AdaptiveMutex&) = delete;
  ~AdaptiveMutex() { pthread_mutex_destroy(&mutex_); }

  void lock() noexcept { pthread_mutex_lock(&mutex_); }
  bool try_lock() noexcept { return pthread_mutex_trylock(&mutex_) == 0; }
  void unlock() noexcept { pthread_mutex_unlock(&mutex_); }

 private:
  pthread_mutex_t mutex_ = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;
};

}  // namespace gpushim
