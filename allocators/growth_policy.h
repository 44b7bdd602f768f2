// A per-thread request not to grow past the peak: while a thread holds a NoNewPeakScope, a VmmArena
// answers nullptr (not counted as a failure) to an allocation it could only serve by mapping memory past
// the most it has held so far.
//
// Why: a block freed while another stream still works waits for a fence (router/free_fence_queue.h). If
// the program then asks for more than the arena has free, growing raises the process's peak by memory
// that the GPU is about to hand back. The router asks under this scope first while fenced blocks wait,
// waits a bounded time for them, and only then lets the arena grow (router/out_of_memory.h,
// docs/free-safety.md). Below the peak, growth costs nothing the program's peak shows, so it is allowed.
//
// The tiered backend uses it too: before its large tier grows past its peak, its small tier's empty
// slabs go back to the arena, where the large block may then fit (allocators/tiered_allocator.cpp).
//
// A thread-local flag, not an argument, so the decorators between the router and the arena (per-thread
// caches, tiers, statistics, limits) need not pass it on.
#pragma once

namespace gpushim {

namespace detail {
// initial-exec: read on every large allocation of the tiered backend, so no __tls_get_addr call.
inline thread_local bool t_no_new_peak __attribute__((tls_model("initial-exec"))) = false;
}  // namespace detail

inline bool new_peak_refused() noexcept { return detail::t_no_new_peak; }

class NoNewPeakScope {
 public:
  NoNewPeakScope() noexcept : previous_(detail::t_no_new_peak) { detail::t_no_new_peak = true; }
  ~NoNewPeakScope() { detail::t_no_new_peak = previous_; }
  NoNewPeakScope(const NoNewPeakScope&) = delete;
  NoNewPeakScope& operator=(const NoNewPeakScope&) = delete;

 private:
  bool previous_;
};

}  // namespace gpushim
