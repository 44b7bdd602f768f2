// Per-thread state: the pending cuMemFree batch of each device, and the counters. Made on a thread's
// first call, registered so that the out-of-memory sweep and the exit statistics can reach every
// thread's, and folded into the shared fallbacks when the thread exits. this_thread_state() and
// counters() run on every allocate and free, so they are inline here.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <new>
#include <vector>

#include "allocators/adaptive_mutex.h"
#include "router/free_fence_queue.h"
#include "router/marked_batches.h"
#include "router/peak_growth.h"
#include "router/router_state.h"
#include "router/spin_lock.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

// One program-visible count. A thread's own counts have one writer, the thread: an add is a load and a
// store, not a locked read-modify-write (four of those per pair were ~7% of a pair's cycles on one
// thread). g_retired's are shared by every thread that has exited or has no state: those add atomically.
class Count {
 public:
  void fetch_add(std::uint64_t n, std::memory_order) noexcept {
    if (shared_) {
      value_.fetch_add(n, std::memory_order_relaxed);
    } else {
      value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    }
  }
  Count& operator+=(std::uint64_t n) noexcept {
    fetch_add(n, std::memory_order_relaxed);
    return *this;
  }
  std::uint64_t load() const noexcept { return value_.load(std::memory_order_relaxed); }
  void make_shared() noexcept { shared_ = true; }

 private:
  std::atomic<std::uint64_t> value_{0};
  bool shared_ = false;
};

// Program-visible counts per device, kept per thread (no shared cache line on the hot path) and folded
// into g_retired when a thread exits.
struct Counters {
  Count allocs, frees, failed, bytes;
  Count fenced;  // frees that waited for a fence (router/stream_activity.h)
  // Allocations at the peak while blocks waited for fences, and how they were served (StatsRow says).
  Count at_peak, at_peak_taken, at_peak_waited;
  Count at_peak_past_by_rule, at_peak_past_unwaited, at_peak_past_after_wait;  // why each was let past
  Count at_peak_past_mapped;  // of those let past, the ones that mapped memory (grew)
  Count at_peak_wait_ns;  // the time those allocations spent waiting for fences
  // Every count: a count added to this list is shared, retired and summed with the rest.
  static constexpr Count Counters::*kAll[] = {
      &Counters::allocs,  &Counters::frees,         &Counters::failed,         &Counters::bytes,
      &Counters::fenced,  &Counters::at_peak,       &Counters::at_peak_taken,  &Counters::at_peak_waited,
      &Counters::at_peak_past_by_rule, &Counters::at_peak_past_unwaited, &Counters::at_peak_past_after_wait,
      &Counters::at_peak_past_mapped, &Counters::at_peak_wait_ns};
  void make_shared() noexcept {
    for (Count Counters::*count : kAll) (this->*count).make_shared();
  }
  // Adds each of `other`'s counts to this one's.
  void add(const Counters& other) noexcept {
    for (Count Counters::*count : kAll) (this->*count) += (other.*count).load();
  }
};
extern Counters g_retired[kMaxDevices];

struct ThreadState;
extern AdaptiveMutex g_threads_lock;  // registration, exit, and the out-of-memory sweep
std::vector<ThreadState*>& threads();  // every live ThreadState; under g_threads_lock

// Set when this thread's ThreadState has been destroyed (thread exit, or exit() on the main thread):
// calls that still arrive (static destructors freeing device memory) use the shared fallbacks.
inline GPUSHIM_HOT_TLS bool t_state_gone = false;

// Sets or clears bit d of one of a thread's device masks, under its lock: a load and a store (no locked
// instruction: one writer at a time), stored only when it changes.
inline void set_device_bit(std::atomic<std::uint64_t>& bits, int d, bool set) noexcept {
  const std::uint64_t now = bits.load(std::memory_order_relaxed);
  const std::uint64_t bit = std::uint64_t{1} << d;
  if (set != ((now & bit) != 0)) bits.store(now ^ bit, std::memory_order_relaxed);
}

// How many frees reused at once in a row, while its returned list holds blocks, end a thread's keeping
// them there: by then its work has stayed ordered (or solo) a while, the list drains through its
// allocations, and its frees go through its cache, the backend's, which takes no locked instruction.
// The list's lock takes two a pair: one thread launching on its one stream runs in solo, yet ran every
// pair through the list for good, seeded by the few frees fenced before solo began, 10-20 ns a pair
// slower than without the stream (H200, fiftieth session, docs/perf-notes.md). A thread whose work
// turns ordered and back within microseconds (16 threads, a stream each) frees fenced again well before
// the run ends, and keeps the list as before.
inline constexpr unsigned kAtOnceRunThatEndsKeeping = 4096;

struct ThreadState {
  // The owner on each free; another thread only in an out-of-memory sweep or a double-free check.
  // A spin lock: the owner holds it for a push_back, and it is almost never contended.
  SpinLock lock;
  PendingBatch batches[kMaxDevices];
  Counters counters[kMaxDevices];
  unsigned fenced_since_poll = 0;  // the owner's only
  // The owner's frees reused at once while its returned list held blocks, since its last fenced free,
  // up to kAtOnceRunThatEndsKeeping (below). The owner's only.
  unsigned at_once_run = 0;
  // Whether a free reused at once may join the owner's returned list, which holds blocks
  // (keep_freed_block, router/returned_blocks.h says why it does): yes until kAtOnceRunThatEndsKeeping
  // such frees in a row. The owner only.
  bool keeps_at_once_free() noexcept {
    if (at_once_run >= kAtOnceRunThatEndsKeeping) return false;
    ++at_once_run;
    return true;
  }
  void note_fenced_free() noexcept { at_once_run = 0; }
  // The owner's waits at the peak, any device: whether its next turn there grows (router/peak_growth.h).
  RecentWaits at_peak_waits;
  // Blocks this thread freed whose fences completed, by device, put here by the polling thread under
  // `lock` and handed out again by this thread's allocations of their size (router/returned_blocks.h).
  std::vector<FreedBlock> returned[kMaxDevices];
  // The bytes of returned[d], kept rather than summed: the poller checks a list's cap under this
  // thread's lock, and a list of small blocks under a 128 MiB cap may hold many thousands.
  std::uint64_t returned_bytes[kMaxDevices] = {};
  // The least returned_bytes[d] held since the last give-back to this list that followed a take, or
  // kNoTakeSinceReturn when nothing was taken since: bytes the list kept through a whole round of its
  // owner's takes were not needed, and half of them go to the backend at the next give-back
  // (router/returned_blocks.cpp, surplus_of). Under `lock`.
  static constexpr std::uint64_t kNoTakeSinceReturn = UINT64_MAX;
  std::uint64_t returned_low[kMaxDevices];
  // Bit d: returned[d] got blocks. The one load an allocation pays for this. Written only under
  // `lock` (a load and a store, no locked instruction: one writer at a time); read without it.
  std::atomic<std::uint64_t> returned_devices{0};
  bool may_have_returned(int d) const noexcept { return (returned_devices.load(std::memory_order_relaxed) >> d) & 1; }
  // Under `lock`: bit d set or cleared, stored only when it changes. Readers read the list itself under
  // the lock, so the bit needs no ordering: one that misses a new bit finds the list at its next call.
  void mark_returned(int d, bool holds) noexcept { set_device_bit(returned_devices, d, holds); }
  // cuMemFree batches this thread closed while streams carried work, waiting with it for the streams
  // they marked (router/marked_batches.h), by device, oldest first. Under `lock`.
  std::vector<MarkedBatch> marked[kMaxDevices];
  // Bit d: marked[d] holds batches. Written under `lock` (store only, as returned_devices); read
  // without it by the owner's allocations and frees.
  std::atomic<std::uint64_t> marked_devices{0};
  bool may_have_marked(int d) const noexcept { return (marked_devices.load(std::memory_order_relaxed) >> d) & 1; }
  void mark_marked(int d, bool holds) noexcept { set_device_bit(marked_devices, d, holds); }
  ThreadState() {
    for (std::uint64_t& low : returned_low) low = kNoTakeSinceReturn;
    std::lock_guard<AdaptiveMutex> guard(g_threads_lock);
    try {
      threads().push_back(this);
    } catch (...) {
    }
  }
  // Thread exit (also the main thread at process exit): no driver call here. Pending and returned
  // blocks become orphans of their device, fenced by whichever thread closes or polls next. Once
  // deregistered (under g_threads_lock) no poller returns blocks here any more.
  ~ThreadState() {
    t_state_gone = true;
    {
      std::lock_guard<AdaptiveMutex> guard(g_threads_lock);
      threads().erase(std::remove(threads().begin(), threads().end(), this), threads().end());
    }
    std::lock_guard<SpinLock> guard(lock);
    for (int d = 0; d < kMaxDevices; ++d) {
      g_retired[d].add(counters[d]);
      DeviceState* device = g_devices[d].load();
      if (!device) continue;
      if (!batches[d].empty()) device->fences.adopt_orphans(batches[d].take());
      if (!returned[d].empty()) device->fences.adopt_orphans(std::move(returned[d]));
      // Lock held (take_marked_batches' contract); no driver call, as for the rest.
      for (MarkedBatch& batch : take_marked_batches(*this, *device)) device->fences.adopt_orphans(std::move(batch.blocks));
    }
  }
};
// This thread's state, made on its first call; t_state_owner (touched once per thread) destroys it at
// thread exit. nullptr once destroyed, or when no host memory was left to make it.
inline GPUSHIM_HOT_TLS ThreadState* t_state = nullptr;
struct ThreadStateOwner {
  ThreadState* state = nullptr;
  ~ThreadStateOwner() {
    t_state = nullptr;
    delete state;  // sets t_state_gone
  }
};
inline thread_local ThreadStateOwner t_state_owner;

// static: each file gets its own copy, which GCC inlines with the slow path split off, as it did while
// this was file-local in router.cpp.
static inline ThreadState* this_thread_state() noexcept {
  if (ThreadState* state = t_state) return state;
  if (t_state_gone) return nullptr;
  ThreadState* state = new (std::nothrow) ThreadState();
  if (!state) return nullptr;
  t_state_owner.state = state;
  t_state = state;
  return state;
}

// True when the calling thread holds marked batches of device `d` (an allocation then weighs waiting for
// them against growing, as for the fence queue's blocks).
inline bool holds_marked_batches(int d) noexcept {
  const ThreadState* thread = t_state;
  return thread && thread->may_have_marked(d);
}

// Forced inline: GCC inlined it into serve and the frees (this_thread_state's slow path split off) while
// it was file-local in router.cpp; shared from this header its heuristics kept it a call.
__attribute__((always_inline)) static inline Counters& counters(int device) {
  ThreadState* state = this_thread_state();
  return state ? state->counters[device] : g_retired[device];
}

// Runs `visit` on every live thread's state, under the registry lock and that thread's lock: the cold
// sweeps (memory pressure, the transition to ordered, statistics, double-free checks).
template <typename Visit>
void for_each_thread(Visit visit) noexcept {
  std::lock_guard<AdaptiveMutex> registry(g_threads_lock);
  for (ThreadState* thread : threads()) {
    std::lock_guard<SpinLock> guard(thread->lock);
    visit(*thread);
  }
}

// Closes every thread's open and marked cuMemFree batches of this device into the fence queue (memory
// pressure: a fence is what synchronize_all can wait for).
void close_all_thread_batches(DeviceState& device) noexcept;
// Closes the calling thread's pending cuMemFree batch of this device, if it has one (an allocation at the
// peak: those blocks come back only once fenced, and a batch of 16 MiB blocks closes at the fourth).
void close_this_thread_batch(DeviceState& device) noexcept;
// Takes every thread's open and marked cuMemFree batches of this device, unfenced (the work turned
// ordered): one vector each, moved out. Called under the activity lock (router.cpp, poll_turned_ordered).
std::vector<std::vector<FreedBlock>> take_all_thread_batches(DeviceState& device) noexcept;
// The bytes of every thread's open cuMemFree batch of device `ordinal` (their marked batches' are
// DeviceState::marked_bytes).
std::uint64_t thread_open_batch_bytes(int ordinal) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
