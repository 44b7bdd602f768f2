// The router (router/router.h): the request flow. How a request flows and why free-safety is shaped
// as it is: docs/free-safety.md. The pieces it shares state with (router/router_state.h) live beside
// it: device_state.cpp, thread_state.*, stream_free_lists.*, held_for_importers.*, out_of_memory.*,
// exit_statistics.*, after_fork.*. Pure pieces are tested on the CPU: live_block_table.*,
// free_fence_queue.*, pitch.h, memory_report.*.
#include "router/router.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "allocators/allocator.h"
#include "allocators/backend_registry.h"
#include "annotations/nvtx_memory.h"
#include "annotations/nvtx_ranges.h"
#include "config/settings.h"
#include "diagnostics/log.h"
#include "diagnostics/monotonic_clock.h"
#include "driver/real_driver.h"
#include "router/after_fork.h"
#include "router/exit_statistics.h"
#include "router/fault_injection.h"
#include "router/free_fence_queue.h"
#include "router/held_for_importers.h"
#include "router/live_block_table.h"
#include "router/marked_batches.h"
#include "router/out_of_memory.h"
#include "router/pitch.h"
#include "router/returned_blocks.h"
#include "router/router_state.h"
#include "router/spin_lock.h"
#include "router/stream_activity.h"
#include "router/stream_free_lists.h"
#include "router/thread_state.h"
#include "tracing/trace_recorder.h"

namespace gpushim::router {

std::atomic<int> g_active_captures{0};
std::atomic<std::uint64_t> g_stream_generation{1};
std::mutex g_captures_lock;
std::vector<CUstream>& capturing_streams() {
  static auto* streams = new std::vector<CUstream>();
  return *streams;
}

namespace {

// cuMemAllocAsync/cuMemFreeAsync on the per-thread default stream name a different stream on every
// thread behind one handle, so its blocks cannot sit in a shared per-stream list; they take the
// cuMemFree path (the per-thread stream is a blocking stream, so the legacy-stream fence covers it).
bool is_per_thread_stream(CUstream s) { return s == CU_STREAM_PER_THREAD; }
CUstream normalized(CUstream s) { return s ? s : CU_STREAM_LEGACY; }

std::size_t round_up(std::size_t bytes) { return (bytes + kMinAlignment - 1) / kMinAlignment * kMinAlignment; }

// Reuse at once while the GPU work is totally ordered (router/stream_activity.h decides from which
// streams carry work). Measured on the H100 (PyTorch transformer with its cache off, fenced reuse): 27-36
// GiB peak for 9.6 GiB live, because the CPU runs a step ahead of the GPU and fenced blocks wait for it.
bool g_fence_always = false;  // GPUSHIM_FREE_FENCE=always, read once in ensure_started()
// GPUSHIM_BACKEND=passthrough with nothing to count, trace or cap: every call is the driver's own, with
// no bookkeeping (the driver itself answers invalid and double frees). The target (docs/benchmarks.md):
// passthrough adds at most 30 ns per call over no preload; the router's bookkeeping alone was ~300
// instructions.
bool g_pure_passthrough = false;
// GPUSHIM_STATS: the exit table (router/exit_statistics.cpp) is the only reader of the router's counts,
// so without it the hot path counts nothing (a thread-state lookup and 3 adds a pair).
bool g_count = false;

CUresult report_invalid_free(CUresult rc, CUdeviceptr p) noexcept {
  if (rc == CUDA_ERROR_INVALID_VALUE) {
    static bool reported = false;
    log_once(&reported, LogLevel::warn, "cuMemFree(0x%llx): not a live allocation (invalid or double free)",
             static_cast<unsigned long long>(p));
  }
  return rc;
}
bool reuse_at_once() noexcept { return !g_fence_always && freed_blocks_reusable_at_once(); }
GPUSHIM_HOT_TLS unsigned t_unfenced_frees = 0;  // frees reused at once on this thread, for polling
// Frees on this thread until the next (kFreesPerIdleCheck, router/free_fence_queue.h) asks the backend to
// give back memory idle past its release delay (Allocator::release_idle) and ages out quiet streams'
// free lists (close_idle_stream_lists).
GPUSHIM_HOT_TLS unsigned t_frees_until_idle_check = kFreesPerIdleCheck;
// The idle checks of a device, here and after a synchronization of its context
// (after_context_synchronize): both read the clock, so never per free.
void run_idle_checks(DeviceState& device) noexcept {
  if (!device.properties.stream_ordered) close_idle_stream_lists(device);  // the pool keeps no lists
  device.backend().release_idle();
}
// Free blocks kept where the arena's release cannot see them, the threads' returned lists (up to
// kMaxReturnedBytes a thread) and what the layers in front of the arena keep (the thread caches, the
// tiered slab's empty slabs), go to the arena when its release is due counting them
// (Allocator::release_due_with), so that the idle checks right after give them back once they stayed
// idle through the delay. A thread that stopped allocating would keep them otherwise. The lists go
// first: their small blocks land in this thread's cache, which the layers then hand in with the rest.
// Only after a context synchronization: in a free, the thread's own list is in use, and taking 16
// threads' lists at a free every few thousand would empty them while they run; the arena answers yes at
// most once a delay.
void gather_idle_blocks(DeviceState& device) noexcept {
  const std::uint64_t listed = thread_returned_bytes(device.ordinal);
  Allocator& backend = device.backend();
  if (!backend.release_due_with(listed)) return;
  if (listed != 0) take_all_returned_blocks(device);
  backend.hand_in_kept_blocks();
}
__attribute__((noinline)) void idle_check(DeviceState& device) noexcept {
  t_frees_until_idle_check = kFreesPerIdleCheck;
  run_idle_checks(device);
}
inline void count_free_for_idle_check(DeviceState& device) noexcept {
  if (__builtin_expect(--t_frees_until_idle_check == 0, 0)) idle_check(device);
}

// ctx -> device cache. cuCtxGetCurrent is a read of the driver's thread-local current context (no
// syscall, no lock: it shows as ~10 ns in the pair benchmark), so asking it on every call is cheaper and
// more correct than tracking cuCtxSetCurrent/cudaSetDevice ourselves.
struct ContextCacheEntry {
  CUcontext context;
  DeviceState* device;
  std::uint64_t generation;
};
GPUSHIM_HOT_TLS ContextCacheEntry t_context_cache[4];
GPUSHIM_HOT_TLS unsigned t_context_next = 0;

struct StreamCacheEntry {
  CUstream stream;
  CUcontext context;
  DeviceState* device;
  std::uint64_t generation;
};
GPUSHIM_HOT_TLS StreamCacheEntry t_stream_cache[4];
GPUSHIM_HOT_TLS unsigned t_stream_next = 0;

// Always inlined into the entry points: after the first call it is one guard load (measured as a call
// of its own once router.cpp was split).
__attribute__((always_inline)) inline void ensure_started() noexcept {
  static const bool started = [] {
    const Settings& s = settings();
    g_fence_always = s.free_fence == Settings::FreeFence::always;
    g_count = s.stats;
    g_pure_passthrough = chosen_backend(s).traits.forwards_every_call && !s.stats && s.trace_path.empty() &&
                         !s.limit.set() && !s.fail.armed && s.oom_dump_path.empty();
    tracing::start_from_settings();
    arm_oom_dump(s.oom_dump_path, s.oom_dump_stack);
    arm_fault_injection(s.fail);
    std::atexit(at_exit);
    pthread_atfork(nullptr, nullptr, atfork_child);
    return true;
  }();
  (void)started;
}

// The calling thread's cached device of `context` (nullptr: not cached since the last fork).
__attribute__((always_inline)) inline DeviceState* cached_device_of(CUcontext context,
                                                                  std::uint64_t generation) noexcept {
  for (const ContextCacheEntry& entry : t_context_cache)
    if (entry.context == context && entry.generation == generation) return entry.device;
  return nullptr;
}

// current_device()'s miss: a context this thread has not asked about since the last fork.
__attribute__((noinline)) CUresult current_device_slow(CUcontext context, std::uint64_t generation,
                                                       DeviceState** out) noexcept {
  CUdevice device = -1;
  CUresult rc = real_driver().cuCtxGetDevice(&device);
  if (rc != CUDA_SUCCESS) return rc;
  DeviceState* state = device_state(static_cast<int>(device), context);
  if (!state) return CUDA_ERROR_NOT_SUPPORTED;  // caller passes the request to the driver
  t_context_cache[t_context_next++ % 4] = {context, state, generation};
  *out = state;
  return CUDA_SUCCESS;
}

// The device of the calling thread's current context; the driver's own error when there is none.
// Inline (the cache hit): it runs on every allocation.
__attribute__((always_inline)) inline CUresult current_device(DeviceState** out, CUcontext* context_out) noexcept {
  CUcontext context = nullptr;
  CUresult rc = real_driver().cuCtxGetCurrent(&context);
  if (rc != CUDA_SUCCESS) return rc;
  if (!context) return CUDA_ERROR_INVALID_CONTEXT;  // what cuMemAlloc answers without a context
  *context_out = context;
  const std::uint64_t generation = g_fork_generation.load(std::memory_order_relaxed);
  if (DeviceState* cached = cached_device_of(context, generation)) {
    *out = cached;
    return CUDA_SUCCESS;
  }
  return current_device_slow(context, generation, out);
}

// The device and context of a stream (cuMemAllocAsync uses the stream's device).
CUresult stream_device(CUstream stream, DeviceState** out, CUcontext* context_out) noexcept {
  if (stream == nullptr || stream == CU_STREAM_LEGACY || is_per_thread_stream(stream))
    return current_device(out, context_out);
  const std::uint64_t generation =
      g_stream_generation.load(std::memory_order_acquire) ^ (g_fork_generation.load(std::memory_order_relaxed) << 40);
  for (const StreamCacheEntry& entry : t_stream_cache) {
    if (entry.stream == stream && entry.generation == generation) {
      *out = entry.device;
      *context_out = entry.context;
      return CUDA_SUCCESS;
    }
  }
  CUcontext context = nullptr;
  CUresult rc = real_driver().cuStreamGetCtx(stream, &context);
  if (rc != CUDA_SUCCESS) return rc;
  DeviceState* state = device_of_context(context);
  if (!state) return CUDA_ERROR_NOT_SUPPORTED;
  t_stream_cache[t_stream_next++ % 4] = {stream, context, state, generation};
  *out = state;
  *context_out = context;
  return CUDA_SUCCESS;
}

bool stream_is_capturing(CUstream stream) noexcept {
  // The common case (no capture anywhere) costs one relaxed load, no driver call.
  if (g_active_captures.load(std::memory_order_acquire) == 0) return false;
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  if (real_driver().cuStreamIsCapturing(stream, &status) != CUDA_SUCCESS) return false;
  return status != CU_STREAM_CAPTURE_STATUS_NONE;
}

// The served block `p` becomes the program's: recorded as live, announced to NVTX tools, counted, traced.
__attribute__((always_inline)) inline CUresult hand_out(DeviceState& device, void* p, std::size_t bytes,
                                                        std::size_t block_size, StreamHandle handle, bool async,
                                                        CUdeviceptr* out) noexcept {
  const int d = device.ordinal;
  if (device.in_oom_burst.load(std::memory_order_relaxed)) device.in_oom_burst.store(false, std::memory_order_relaxed);
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  LiveBlock live{bytes, block_size, d, async};
  live.stream = handle;
  if (oom_dump_armed()) stamp_for_dump(&live);
  live_blocks().insert(address, live);
  annotations::on_block_allocated(address, bytes);  // compute-sanitizer sees the block's own bounds
  if (g_count) {
    Counters& mine = counters(d);
    mine.allocs.fetch_add(1, std::memory_order_relaxed);
    mine.bytes.fetch_add(bytes, std::memory_order_relaxed);
  }
  tracing::record(async ? tracing::EventKind::alloc_async : tracing::EventKind::alloc, d, handle, address, bytes,
                  device.properties.id);
  *out = static_cast<CUdeviceptr>(address);
  return CUDA_SUCCESS;
}

// The backend's allocation, except while freed blocks wait for a fence: then growing past the peak
// waits for them first (router/out_of_memory.h). The fence queue's blocks count wherever they were freed,
// marked batches only where this thread holds some: they come back to its own list. Once at the peak,
// the allocation waits while any freed block waits, whichever thread holds it
// (DeviceState::holds_fenced_blocks).
__attribute__((always_inline)) inline void* allocate_ordinary(DeviceState& device, std::size_t block_size,
                                                              StreamHandle handle) noexcept {
  if (__builtin_expect(device.fences.holds_blocks() || holds_marked_batches(device.ordinal), 0))
    return allocate_without_new_peak(device, block_size, handle);
  return device.backend().allocate(block_size, handle);
}

// serve()'s cold half, out of line so the common path stays short: a size no backend can round,
// GPUSHIM_FAIL armed (the chosen allocation takes the failure path as if memory had run out), or the
// backend without memory (`tried`: serve already asked it): memory pressure, then out of memory.
__attribute__((noinline)) CUresult serve_slow(DeviceState& device, std::size_t bytes, std::size_t block_size,
                                              CUstream stream, StreamHandle handle, bool async, bool tried,
                                              CUdeviceptr* out) noexcept {
  const int d = device.ordinal;
  if (bytes > SIZE_MAX - kMinAlignment) {
    counters(d).failed.fetch_add(1, std::memory_order_relaxed);
    tracing::record(tracing::EventKind::alloc_failed, d, 0, 0, bytes, device.properties.id);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  void* p = nullptr;
  const bool injected = fault_injection_armed() && inject_failure(bytes);
  if (!injected) {
    if (!tried) {
      if (async && !device.properties.stream_ordered && !is_per_thread_stream(stream))
        p = take_from_stream_list(device, normalized(stream), block_size);
      if (!p) p = allocate_ordinary(device, block_size, handle);
    }
    if (!p) {
      annotations::ScopedRange range(annotations::SlowEvent::oom_handling);
      p = allocate_under_pressure(device, block_size, handle);
    }
  }
  if (!p) {
    counters(d).failed.fetch_add(1, std::memory_order_relaxed);
    tracing::record(tracing::EventKind::alloc_failed, d, handle, 0, bytes, device.properties.id);
    tracing::record(tracing::EventKind::out_of_memory, d, handle, 0, bytes, device.properties.id);
    report_out_of_memory(device, bytes, handle, injected);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  return hand_out(device, p, bytes, block_size, handle, async, out);
}

// Serves an allocation on `device`. `stream` is 0 for cuMemAlloc. Inlined into the entry points: the
// common path is a backend call and the table insert.
__attribute__((always_inline)) inline CUresult serve(DeviceState& device, std::size_t bytes, CUstream stream,
                                                     bool async, CUdeviceptr* out) noexcept {
  // Driver-backed backends get the exact size: the driver aligns itself, and compute-sanitizer checks a
  // cuMemAlloc block against the size it was asked for (a rounded size hid a 4-byte overrun on the H100).
  const std::size_t block_size = device.properties.driver_backed ? bytes : round_up(bytes);
  // Backends read stream 0 as "no stream order" (cuMemAlloc); a program's async call on stream 0
  // means the legacy stream.
  const StreamHandle handle = reinterpret_cast<StreamHandle>(async ? normalized(stream) : stream);
  if (__builtin_expect(bytes > SIZE_MAX - kMinAlignment || fault_injection_armed(), 0))
    return serve_slow(device, bytes, block_size, stream, handle, async, false, out);
  void* p = nullptr;
  // Fenced blocks this thread freed whose fences completed (router/returned_blocks.h) come first.
  // And the blocks of its marked batches that have passed (router/marked_batches.h).
  if (ThreadState* thread = t_state;
      thread && __builtin_expect((thread->returned_devices.load(std::memory_order_relaxed) |
                                  thread->marked_devices.load(std::memory_order_relaxed)) != 0, 0))
    p = take_returned_block(*thread, device, block_size);
  if (!p && async && !device.properties.stream_ordered && !is_per_thread_stream(stream))
    p = take_from_stream_list(device, normalized(stream), block_size);
  if (!p) p = allocate_ordinary(device, block_size, handle);
  if (__builtin_expect(!p, 0)) return serve_slow(device, bytes, block_size, stream, handle, async, true, out);
  return hand_out(device, p, bytes, block_size, handle, async, out);
}

// True while gpushim still holds the freed block `p` back (a thread's pending batch or returned list, a
// stream's free list, the fence queue). Cold: only a double free asks.
bool still_held(DeviceState& device, CUdeviceptr p) noexcept {
  if (is_held_for_importers(p)) return true;
  void* ptr = reinterpret_cast<void*>(p);
  // A thread's pending batch, or its returned list (router/returned_blocks.h).
  bool held_by_a_thread = false;
  for_each_thread([&](ThreadState& thread) {
    if (thread.batches[device.ordinal].holds(ptr)) held_by_a_thread = true;
    for (const FreedBlock& block : thread.returned[device.ordinal])
      if (block.ptr == ptr) held_by_a_thread = true;
    for (const MarkedBatch& batch : thread.marked[device.ordinal])
      for (const FreedBlock& block : batch.blocks)
        if (block.ptr == ptr) held_by_a_thread = true;
  });
  if (held_by_a_thread) return true;
  for (StreamShard& shard : device.stream_shards) {
    std::lock_guard<SpinLock> guard(shard.lock);
    for (const auto& list : shard.lists)
      for (const FreedBlock& block : list.second.blocks)
        if (block.ptr == ptr) return true;
  }
  return device.fences.holds(ptr);
}

// A pointer gpushim freed recently was freed again.
CUresult double_free(CUdeviceptr p, const LiveBlock& block, bool async, CUstream stream) noexcept {
  DeviceState* device = g_devices[block.device].load(std::memory_order_acquire);
  // A driver-backed block still held back has not been given to the driver yet, so the driver still
  // names it as a live allocation: that is our double free, not a foreign block (freeing it through the
  // driver here would free it twice once its fence completes).
  if (device && device->properties.driver_backed && !still_held(*device, p)) {
    // The driver may have given the address to a foreign allocation since (managed memory, a program's
    // own pool): if it names a live allocation there, it is not ours to judge.
    CUdeviceptr base = 0;
    std::size_t size = 0;
    if (real_driver().cuMemGetAddressRange(&base, &size, p) == CUDA_SUCCESS && base == p)
      return async ? real_driver().cuMemFreeAsync(p, stream) : real_driver().cuMemFree(p);
  }
  static bool reported = false;
  log_once(&reported, LogLevel::warn,
           "double free of 0x%llx (%zu bytes, device %d): returning CUDA_ERROR_INVALID_VALUE (reported once)",
           static_cast<unsigned long long>(p), block.requested, block.device);
  return CUDA_ERROR_INVALID_VALUE;
}

// The context a batch started by this free is recorded in: the freeing thread's when it is on the
// block's device (its legacy stream is the one the program's blocking streams order against); else the
// device's default.
FenceContext batch_context(DeviceState& device) noexcept {
  CUcontext current = nullptr;
  DeviceState* current_state = nullptr;
  return current_device(&current_state, &current) == CUDA_SUCCESS && current_state == &device ? current : nullptr;
}

// A quarter of a batch's byte cap: four such frees close a batch (router/free_fence_queue.h).
constexpr std::size_t kAskBeforeFencingBytes = kBatchMaxBytes / 4;

// Polls stream activity (router/stream_activity.h): true when that turned the work ordered just now.
// Then every cuMemFree'd block still held back, on every device (the threads' open batches, orphans,
// device-fenced batches), goes back to its backend at once, unfenced: it may be reused exactly as a
// block freed now may (docs/free-safety.md, "When the work turns ordered again"). Before, the open
// batches were closed with a fence: with no stream active any more that was the device-wide fence, an
// event on the legacy stream and on every non-blocking stream, ~5 us on the H200, once per burst of
// side-stream work (alloc_bench, a stream per thread: the one-thread p99 was that close). Only on that
// transition: a per-thread-stream async free reaches free_fenced while the work is ordered, and taking
// every batch then would take the thread registry's lock every 8 frees and defeat batching. Only by the
// thread whose poll made the transition (every thread that read "unordered" before and "ordered" after
// its own poll did it before: 16 threads with a stream each on the H200, 16 MiB pairs, waited 36% of
// their wall-clock time for each other's give-backs). The blocks are taken while the poll still holds
// the activity lock, so that no stream starts work between the transition and the take (a block used on
// such a stream and freed meanwhile went back unfenced before), and given back after it is let go.
struct TakenAtTransition {
  DeviceState* device = nullptr;
  FreeFenceQueue::Taken taken;
};
struct TakenAtTransitions {
  std::vector<TakenAtTransition> devices;
  // Only this device's blocks (nullptr: every device's): after a synchronization of its context, whose
  // give-back may unmap there and so wait for that context alone (after_context_synchronize polls only
  // while it serves that device alone; a device served meanwhile keeps its blocks until the next
  // transition).
  DeviceState* only = nullptr;
};

// poll_stream_activity's TurnedOrderedHook: under the activity lock, only moves blocks. Allocates only
// here, at a transition: the poll runs every 8 fenced frees.
void take_held_back_blocks(void* arg) noexcept {
  auto& transitions = *static_cast<TakenAtTransitions*>(arg);
  std::vector<TakenAtTransition>& taken = transitions.devices;
  for (const auto& slot : g_devices) {
    DeviceState* each = slot.load(std::memory_order_acquire);
    if (!each || each->properties.stream_ordered) continue;
    if (transitions.only && each != transitions.only) continue;
    try {
      taken.emplace_back();  // the slot first: the move into it below cannot fail
    } catch (...) {
      break;  // no host memory: the rest come back through their fences
    }
    taken.back().device = each;
    taken.back().taken = each->fences.take_device_batches(take_all_thread_batches(*each));
  }
}

__attribute__((noinline)) bool poll_turned_ordered(BusyStreams busy = BusyStreams::probe,
                                                   DeviceState* only = nullptr) noexcept {
  TakenAtTransitions taken;
  taken.only = only;
  const bool turned = poll_stream_activity(g_fence_always ? nullptr : take_held_back_blocks, &taken, busy);
  for (TakenAtTransition& each : taken.devices) each.device->fences.give_back_taken(std::move(each.taken));
  return turned && reuse_at_once();
}

// free_fenced's rare halves, out of line so that the common path stays a push under the thread's lock
// (with the close inline, the vector it moves out and its destructor cost ~20 instructions a free).
// The free that fills its thread's batch closes it; a sweep may have taken the batch since, so
// whatever it holds is closed.
__attribute__((noinline)) void close_full_batch(DeviceState& device, ThreadState& thread) noexcept {
  std::vector<FreedBlock> full;
  FenceContext context = nullptr;
  {
    std::lock_guard<SpinLock> guard(thread.lock);
    PendingBatch& batch = thread.batches[device.ordinal];
    context = batch.context();
    full = batch.take();
  }
  // Marked, it waits with this thread for the streams working now (router/marked_batches.h); where it
  // cannot be, in the fence queue.
  if (!full.empty() && !hold_marked_batch(thread, device, full, context))
    device.fences.close_device_batch(std::move(full), context);
  poll_turned_ordered();  // a stream that stopped carrying work is found idle here, and every 8 frees
  if (thread.may_have_marked(device.ordinal)) return_passed_batches(thread, device);
}

// The first free of a batch asks which context the batch will be fenced in (batch_context), with no
// lock of ours held: current_device may build the device state. True when the block filled the batch.
__attribute__((noinline)) bool start_batch(DeviceState& device, ThreadState& thread, const FreedBlock& owned) noexcept {
  const FenceContext context = batch_context(device);
  std::lock_guard<SpinLock> guard(thread.lock);
  try {
    return thread.batches[device.ordinal].add(owned, context);
  } catch (...) {
    return false;  // no host memory: the block is held forever, which is safe
  }
}

// Adds a cuMemFree'd block to this thread's pending batch of its device.
__attribute__((always_inline)) inline void free_fenced(DeviceState& device, const FreedBlock& block) noexcept {
  ThreadState* thread = this_thread_state();
  if (__builtin_expect(!thread, 0)) {  // exit path: no batch any more; the next close or poll fences it
    try {
      device.fences.adopt_orphans({block});
    } catch (...) {
    }
    return;
  }
  FreedBlock owned = block;
  owned.owner = thread;  // its fence's completion returns it here (router/returned_blocks.h)
  thread->note_fenced_free();
  if (g_count) thread->counters[device.ordinal].fenced.fetch_add(1, std::memory_order_relaxed);
  PendingBatch& batch = thread->batches[device.ordinal];
  thread->lock.lock();
  bool is_full;
  if (__builtin_expect(batch.empty(), 0)) {
    thread->lock.unlock();
    is_full = start_batch(device, *thread, owned);
  } else {
    is_full = batch.add_to_started(owned);  // within the capacity reserved at the start: no allocation
    thread->lock.unlock();
  }
  if (__builtin_expect(is_full, 0)) {
    close_full_batch(device, *thread);
  } else if ((++thread->fenced_since_poll & 7) == 0) {
    // A stream that stopped carrying work is found idle here: poll every 8 fenced frees, and whenever a
    // batch closes. The poll notes how far the streams got, which is what this thread's marked batches
    // wait for.
    poll_turned_ordered();
    if (thread->may_have_marked(device.ordinal)) return_passed_batches(*thread, device);
  }
}

// A freed block that may be reused at once: onto this thread's returned list of the device while that
// list holds blocks and keeps such frees (its next allocations take from there first; keep_freed_block,
// router/returned_blocks.h, says when and why), else to the backend. A backend that orders its own frees (passthrough) never has a list that holds
// blocks (router/router_state.h: no BlockOwners there), so its frees all reach the backend: joined to a
// list, a block reached the next allocation of its size while a kernel on a non-blocking stream still
// read it (alloc_torture under passthrough with GPUSHIM_STATS on the H200, twelfth session).
__attribute__((always_inline)) inline void free_at_once(DeviceState& device, const FreedBlock& freed) noexcept {
  ThreadState* thread = t_state;
  if (thread && __builtin_expect(thread->may_have_returned(device.ordinal), 0) &&
      keep_freed_block(*thread, device, freed))
    return;
  device.backend().deallocate(freed.ptr, freed.bytes, 0);
}

// cuMemFree's end: back to the backend at once while the GPU's work is totally ordered (stream-ordered
// backends keep their fence: their frees are ordered on their own stream), else through a fence.
// Inlined into free(); give_back() is the same for the rest of the router.
__attribute__((always_inline)) inline void give_back_inline(DeviceState& device, const FreedBlock& freed) noexcept {
  if (!device.fenced() || (!device.properties.stream_ordered && reuse_at_once())) {
    free_at_once(device, freed);
    // Blocks fenced while a stream worked come back as their fences complete: poll now and then.
    if (device.fences.holds_blocks() && (++t_unfenced_frees & 63) == 0) device.fences.poll();
    return;
  }
  // A large block would close a batch by itself, or soon: first ask whether the streams that kept the
  // work unordered are idle by now (a side stream's work often takes microseconds); if so it goes back
  // at once instead of costing a fence and waiting for it (whichever thread's poll found them so). It
  // only asks: the fence's own polls queue the probes (router/stream_activity.h, BusyStreams).
  if (!device.properties.stream_ordered && freed.bytes >= kAskBeforeFencingBytes) {
    poll_turned_ordered(BusyStreams::ask_only);
    if (reuse_at_once()) {
      free_at_once(device, freed);
      return;
    }
  }
  free_fenced(device, freed);
}

}  // namespace

void give_back(DeviceState& device, const FreedBlock& freed) noexcept { give_back_inline(device, freed); }

// The state of the device whose context `context` is (nullptr: the calling thread's current one), or
// nullptr where gpushim serves nothing on it yet. Never builds one, unlike current_device().
DeviceState* served_device_of(CUcontext context) noexcept {
  if (!context && real_driver().cuCtxGetCurrent(&context) != CUDA_SUCCESS) return nullptr;
  if (!context) return nullptr;
  if (DeviceState* cached = cached_device_of(context, g_fork_generation.load(std::memory_order_relaxed)))
    return cached;
  return served_device(device_ordinal_of(context));
}

void after_context_synchronize(CUcontext context) noexcept {
  // A capture (relaxed mode allows this call meanwhile) forbids the fences' and the arena's driver calls.
  if (g_active_captures.load(std::memory_order_acquire) > 0) return;
  DeviceState* device = served_device_of(context);
  if (!device) return;  // nothing allocated there: the router may not even have started
  // At most once a millisecond a device, by whichever thread comes first: a program that synchronizes in
  // a tight loop (each call waits microseconds at least) pays a clock read a call.
  constexpr std::uint64_t kIntervalNs = 1'000'000;
  const std::uint64_t now = monotonic_ns();
  std::uint64_t last = device->synchronize_checked_ns.load(std::memory_order_relaxed);
  if (now - last < kIntervalNs ||
      !device->synchronize_checked_ns.compare_exchange_strong(last, now, std::memory_order_relaxed))
    return;
  // The device's streams are idle now unless another thread launched since: the work may turn ordered,
  // and then this device's open batches and fenced batches go back (they would otherwise wait for their
  // threads' next frees). Only where gpushim serves this device alone: the transition is the process's,
  // and the thread that makes it takes every device's blocks, here this device's only (`only`); another
  // device's open batches would then wait for the next transition or memory pressure.
  bool alone = true;
  for (const auto& slot : g_devices) {
    DeviceState* each = slot.load(std::memory_order_acquire);
    alone = alone && (each == nullptr || each == device);
  }
  if (alone && !device->properties.stream_ordered) poll_turned_ordered(BusyStreams::probe, device);
  if (device->fences.holds_blocks()) device->fences.poll();  // fences the synchronization completed
  if (!device->properties.stream_ordered) gather_idle_blocks(*device);  // the pool keeps no lists
  run_idle_checks(*device);
}

CUresult allocate(CUdeviceptr* out, std::size_t bytes) noexcept {
  ensure_started();
  const RealDriver& driver = real_driver();
  if (g_pure_passthrough) return driver.cuMemAlloc(out, bytes);
  if (!out) return CUDA_ERROR_INVALID_VALUE;
  DeviceState* device = nullptr;
  CUcontext context = nullptr;
  CUresult rc = current_device(&device, &context);
  if (rc == CUDA_ERROR_NOT_SUPPORTED) return driver.cuMemAlloc(out, bytes);  // device without a backend
  if (rc != CUDA_SUCCESS) return rc;
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;  // as cuMemAlloc
  // The pool serves cuMemAlloc on the legacy stream, which a global-mode capture forbids touching:
  // while any capture runs, such allocations are the driver's own (a foreign block, freed by it).
  if (device->properties.stream_ordered && g_active_captures.load(std::memory_order_acquire) > 0)
    return driver.cuMemAlloc(out, bytes);
  return serve(*device, bytes, nullptr, false, out);
}

CUresult free(CUdeviceptr p) noexcept {
  ensure_started();
  const RealDriver& driver = real_driver();
  if (g_pure_passthrough) return report_invalid_free(driver.cuMemFree(p), p);
  if (p == 0) return driver.cuMemFree(p);  // cudaFree(0) creates the context: the driver must see it
  LiveBlock block;
  switch (live_blocks().erase(static_cast<std::uintptr_t>(p), &block)) {
    case LiveBlocks::EraseResult::unknown:
      // Freed long ago but still held for an importer: the driver must not free it under us.
      if (is_held_for_importers(p)) return report_invalid_free(CUDA_ERROR_INVALID_VALUE, p);
      return driver.cuMemFree(p);
    case LiveBlocks::EraseResult::double_free: return double_free(p, block, false, nullptr);
    case LiveBlocks::EraseResult::erased: break;
  }
  DeviceState* device = g_devices[block.device].load(std::memory_order_acquire);
  if (!device) return CUDA_ERROR_INVALID_VALUE;  // a live block's device exists (a fork forgets both)
  if (g_count) counters(block.device).frees.fetch_add(1, std::memory_order_relaxed);
  annotations::on_block_freed(static_cast<std::uintptr_t>(p));
  tracing::record(tracing::EventKind::free, block.device, 0, p, block.requested, device->properties.id);
  if (held_after_free(p, block)) return CUDA_SUCCESS;
  give_back_inline(*device, FreedBlock{reinterpret_cast<void*>(p), block.block_size, 0});
  count_free_for_idle_check(*device);
  return CUDA_SUCCESS;
}

CUresult allocate_async(CUdeviceptr* out, std::size_t bytes, CUstream stream) noexcept {
  ensure_started();
  const RealDriver& driver = real_driver();
  if (g_pure_passthrough) return driver.cuMemAllocAsync(out, bytes, stream);
  // Inside a capture the allocation must become a graph memory node: only the driver can make one.
  if (stream_is_capturing(stream)) return driver.cuMemAllocAsync(out, bytes, stream);
  if (!out) return CUDA_ERROR_INVALID_VALUE;
  DeviceState* device = nullptr;
  CUcontext context = nullptr;
  CUresult rc = stream_device(stream, &device, &context);
  if (rc == CUDA_ERROR_NOT_SUPPORTED) return driver.cuMemAllocAsync(out, bytes, stream);
  if (rc != CUDA_SUCCESS) return rc;
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  // passthrough allocates with cuMemAlloc, in the current context: for a stream of another device that
  // must be the stream's context, or the block would live on the wrong GPU (tests/router_end_to_end_test,
  // TwoDevicesEachServeTheirOwnContext). Provider backends and the pool name their device themselves.
  CUcontext current = nullptr;
  bool pushed = false;
  if (device->properties.driver_backed && !device->properties.stream_ordered &&
      driver.cuCtxGetCurrent(&current) == CUDA_SUCCESS && current != context) {
    if (driver.cuCtxPushCurrent(context) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_CONTEXT;
    pushed = true;
  }
  rc = serve(*device, bytes, stream, true, out);
  if (pushed) {
    CUcontext popped = nullptr;
    driver.cuCtxPopCurrent(&popped);
  }
  return rc;
}

CUresult free_async(CUdeviceptr p, CUstream stream) noexcept {
  ensure_started();
  const RealDriver& driver = real_driver();
  if (g_pure_passthrough) return report_invalid_free(driver.cuMemFreeAsync(p, stream), p);
  if (p == 0) return driver.cuMemFreeAsync(p, stream);
  LiveBlock block;
  switch (live_blocks().erase(static_cast<std::uintptr_t>(p), &block)) {
    case LiveBlocks::EraseResult::unknown:
      if (is_held_for_importers(p)) return report_invalid_free(CUDA_ERROR_INVALID_VALUE, p);
      return driver.cuMemFreeAsync(p, stream);
    case LiveBlocks::EraseResult::double_free: return double_free(p, block, true, stream);
    case LiveBlocks::EraseResult::erased: break;
  }
  DeviceState* device = g_devices[block.device].load(std::memory_order_acquire);
  if (!device) return CUDA_ERROR_INVALID_VALUE;
  const int d = block.device;
  if (g_count) counters(d).frees.fetch_add(1, std::memory_order_relaxed);
  annotations::on_block_freed(static_cast<std::uintptr_t>(p));
  const auto handle = reinterpret_cast<StreamHandle>(stream);
  tracing::record(tracing::EventKind::free_async, d, handle, p, block.requested, device->properties.id);
  // Held for an importer, the block is later freed as by cuMemFree: fenced against every stream.
  if (held_after_free(p, block)) return CUDA_SUCCESS;
  count_free_for_idle_check(*device);
  FreedBlock freed{reinterpret_cast<void*>(p), block.block_size, 0};

  if (device->properties.stream_ordered) {
    // The pool orders the free itself, in a capture too (it becomes a graph free node). Stream 0 is
    // the legacy stream here, not the backend's "no order".
    device->backend().deallocate(freed.ptr, freed.bytes, reinterpret_cast<StreamHandle>(normalized(stream)));
    return CUDA_SUCCESS;
  }
  if (stream_is_capturing(stream)) {
    // The free only happens when the graph runs, maybe many times, maybe never, and gpushim does not see
    // graph launches: the block can never be proven idle, so it is held for the life of the process.
    static bool reported = false;
    log_once(&reported, LogLevel::info, "a gpushim block freed inside a stream capture is held until exit");
    return CUDA_SUCCESS;
  }
  if (is_per_thread_stream(stream)) {
    free_fenced(*device, freed);
    return CUDA_SUCCESS;
  }
  CUstream key = normalized(stream);
  bool full = false;
  if (!add_to_stream_list(*device, key, freed, nullptr, &full)) {
    // The stream's first free since its list was last closed: the new list keeps the stream's context,
    // for its fence event. Asked only here, outside the lock.
    CUcontext context = nullptr;
    DeviceState* stream_state = nullptr;
    if (stream_device(stream, &stream_state, &context) != CUDA_SUCCESS) context = nullptr;
    add_to_stream_list(*device, key, freed, &context, &full);
  }
  if (full) close_stream_list(*device, key);
  return CUDA_SUCCESS;
}

CUresult allocate_pitch(CUdeviceptr* out, std::size_t* pitch, std::size_t width_bytes, std::size_t height,
                        unsigned int element_size_bytes) noexcept {
  ensure_started();
  const RealDriver& driver = real_driver();
  if (g_pure_passthrough) return driver.cuMemAllocPitch(out, pitch, width_bytes, height, element_size_bytes);
  if (!out || !pitch) return CUDA_ERROR_INVALID_VALUE;
  DeviceState* device = nullptr;
  CUcontext context = nullptr;
  CUresult rc = current_device(&device, &context);
  if (rc == CUDA_ERROR_NOT_SUPPORTED) return driver.cuMemAllocPitch(out, pitch, width_bytes, height, element_size_bytes);
  if (rc != CUDA_SUCCESS) return rc;
  if (!valid_pitch_request(width_bytes, height, element_size_bytes)) return CUDA_ERROR_INVALID_VALUE;
  CUdevice dev = 0;
  int attribute = 0;
  if (driver.cuDeviceGet(&dev, device->ordinal) != CUDA_SUCCESS ||
      driver.cuDeviceGetAttribute(&attribute, CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT, dev) != CUDA_SUCCESS)
    attribute = 0;
  std::size_t row = 0, total = 0;
  if (!pitched_size(width_bytes, height, pitch_alignment(attribute), &row, &total)) return CUDA_ERROR_INVALID_VALUE;
  rc = serve(*device, total, nullptr, false, out);
  if (rc == CUDA_SUCCESS) *pitch = row;
  return rc;
}

CUresult get_info(std::size_t* free_bytes, std::size_t* total_bytes) noexcept {
  ensure_started();
  const RealDriver& driver = real_driver();
  if (g_pure_passthrough) return driver.cuMemGetInfo(free_bytes, total_bytes);
  std::size_t real_free = 0, real_total = 0;
  CUresult rc = driver.cuMemGetInfo(&real_free, &real_total);
  if (rc != CUDA_SUCCESS) return rc;
  DeviceState* device = nullptr;
  CUcontext context = nullptr;
  if (current_device(&device, &context) != CUDA_SUCCESS) {
    if (free_bytes) *free_bytes = real_free;
    if (total_bytes) *total_bytes = real_total;
    return CUDA_SUCCESS;
  }
  AllocatorStats stats = device->backend().stats();
  // Cached memory and blocks waiting for their fence are ours to hand out again: free to the program.
  const std::uint64_t reusable = stats.bytes_cached + pending_bytes(*device);
  std::uint64_t free = std::min<std::uint64_t>(real_free + reusable, real_total);
  std::uint64_t total = real_total;
  if (const std::uint64_t limit = device->properties.limit) {
    const std::uint64_t footprint = stats.bytes_reserved;
    const std::uint64_t under_cap = footprint >= limit ? reusable : limit - footprint + reusable;
    free = std::min<std::uint64_t>({under_cap, real_free + reusable, limit});
    total = limit;
  }
  if (free_bytes) *free_bytes = static_cast<std::size_t>(free);
  if (total_bytes) *total_bytes = static_cast<std::size_t>(total);
  return CUDA_SUCCESS;
}

void on_stream_created(CUstream stream, unsigned int flags) noexcept {
  ensure_started();
  // Creating a stream changes nothing yet: only work on it does (router/stream_activity.h).
  track_stream(stream, flags);
  if (!(flags & CU_STREAM_NON_BLOCKING)) return;  // blocking streams are covered by the legacy stream
  DeviceState* device = nullptr;
  CUcontext context = nullptr;
  if (stream_device(stream, &device, &context) == CUDA_SUCCESS) device->events.add_nonblocking_stream(stream, context);
}

void on_stream_destroying(CUstream stream) noexcept {
  ensure_started();
  for (auto& slot : g_devices) {
    DeviceState* device = slot.load(std::memory_order_acquire);
    if (!device) continue;
    // Fence this stream's async-freed blocks while the stream still exists, then forget it.
    close_stream_list(*device, stream);
    device->events.remove_stream(stream);
  }
  untrack_stream(stream);
  g_stream_generation.fetch_add(1, std::memory_order_release);
}

void on_capture_begin(CUstream stream) noexcept {
  std::lock_guard<std::mutex> guard(g_captures_lock);
  try {
    capturing_streams().push_back(stream);
  } catch (...) {
    return;
  }
  g_active_captures.fetch_add(1, std::memory_order_acq_rel);
}

void on_capture_end(CUstream stream) noexcept {
  std::lock_guard<std::mutex> guard(g_captures_lock);
  auto it = std::find(capturing_streams().begin(), capturing_streams().end(), stream);
  if (it == capturing_streams().end()) return;  // a capture we never saw begin
  capturing_streams().erase(it);
  g_active_captures.fetch_sub(1, std::memory_order_acq_rel);
}

bool find_block(CUdeviceptr p, BlockInfo* out) noexcept {
  std::uintptr_t base = 0;
  LiveBlock block;
  if (!live_blocks().find_containing(static_cast<std::uintptr_t>(p), &base, &block)) return false;
  if (!out) return true;
  *out = BlockInfo{static_cast<CUdeviceptr>(base), block.requested, block.device};
  if (block.device >= 0 && block.device < kMaxDevices)
    if (DeviceState* device = g_devices[block.device].load(std::memory_order_acquire))
      out->spilled = device->properties.spill && device->properties.spill->is_spilled(reinterpret_cast<void*>(base));
  return true;
}

}  // namespace gpushim::router
