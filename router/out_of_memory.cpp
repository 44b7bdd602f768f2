// The out-of-memory path (router/out_of_memory.h).
#include "router/out_of_memory.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <new>
#include <string>
#include <thread>

#include "allocators/growth_policy.h"
#include "annotations/nvtx_ranges.h"
#include "config/settings.h"
#include "diagnostics/log.h"
#include "diagnostics/monotonic_clock.h"
#include "ipc/cuda_ipc.h"
#include "providers/mapping_statistics.h"
#include "router/allocation_stacks.h"
#include "router/held_for_importers.h"
#include "router/marked_batches.h"
#include "router/memory_report.h"
#include "router/peak_growth.h"
#include "router/returned_blocks.h"
#include "router/stream_activity.h"
#include "router/stream_free_lists.h"
#include "router/thread_state.h"
#include "tracing/oom_dump_writer.h"
#include "tracing/stack_unwinder.h"
#include "tracing/trace_recorder.h"

namespace gpushim::router {
namespace {

constexpr std::size_t kLargestLiveInReport = 10;

}  // namespace

std::uint64_t pending_bytes(DeviceState& device) noexcept {
  return device.fenced_bytes() + thread_open_batch_bytes(device.ordinal) + stream_list_bytes(device) +
         thread_returned_bytes(device.ordinal);
}

namespace {

// Why 50 ms: the fences wait for work the CPU queued ahead of the GPU, typically well under that; the
// wait happens only when an allocation would otherwise raise the process's peak while fenced blocks
// wait, so a program pays it a bounded number of times (its peak rises a bounded number of steps), and
// a fence that waits for something the program has yet to do (a stream waiting on a host-written value)
// costs 50 ms, not a deadlock.
constexpr std::uint64_t kNewPeakWaitNs = 50'000'000;
// A fence is usually done within microseconds of its record (the GPU keeps up), and a sleep of 20 us
// lasts 60-80 us on Linux (timer slack): the first polls of a wait only yield the CPU.
constexpr std::uint64_t kNewPeakYieldForNs = 200'000;
constexpr auto kNewPeakPollInterval = std::chrono::microseconds(20);

// A free block of `block_size` without growth: this thread's returned list, one of another thread's
// of the size, then the backend below its peak (the caller holds a NoNewPeakScope).
void* take_free_block(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept {
  if (ThreadState* thread = t_state)
    if (void* p = take_returned_block(*thread, device, block_size)) return p;
  if (void* p = take_one_returned_block(device, block_size)) return p;
  return device.backend().allocate(block_size, stream);
}

// Lets the freed blocks that waited for their streams and may be used now come back to the threads that
// freed them, where the allocations look next: the fence queue's completed rounds (`poller` says who
// asks), and the marked batches whose streams a poll has seen get far enough (router/marked_batches.h).
// The streams were polled just before (return_unfenced_blocks polls them only while marked batches
// wait; the pressure path always does).
void return_blocks_of_polled_streams(DeviceState& device, FreeFenceQueue::Poller poller) noexcept {
  device.fences.poll(poller);
  if (device.marked_bytes.load(std::memory_order_relaxed) != 0) return_every_passed_batch(device);
}

// The streams polled, when marked batches wait for them, and then return_blocks_of_polled_streams.
void return_unfenced_blocks(DeviceState& device, FreeFenceQueue::Poller poller) noexcept {
  if (device.marked_bytes.load(std::memory_order_relaxed) != 0) poll_stream_activity();
  return_blocks_of_polled_streams(device, poller);
}

// Every thread's returned list into the backend, then the backend once more: blocks of other sizes,
// together there, may serve what no list held one of. nullptr when the lists were empty.
void* from_every_list(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept {
  if (take_all_returned_blocks(device) == 0) return nullptr;
  return device.backend().allocate(block_size, stream);
}

}  // namespace

void* allocate_without_new_peak(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept {
  Allocator& backend = device.backend();
  // GPUSHIM_STATS: how allocations at the peak were served (the statistics' "at the peak" line).
  Counters* counts = settings().stats ? &counters(device.ordinal) : nullptr;
  const auto count = [counts](Count Counters::*which) {
    if (counts) (counts->*which).fetch_add(1, std::memory_order_relaxed);
  };
  // Why it is let past the peak, if it is (the statistics line; the backend may still find room).
  Count Counters::*past_because = &Counters::at_peak_past_unwaited;
  {
    NoNewPeakScope no_new_peak;
    if (void* p = backend.allocate(block_size, stream)) return p;
    count(&Counters::at_peak);
    // Blocks other threads freed whose fences completed wait in their returned lists: one of the size,
    // else every list to the backend, where blocks of other sizes may together serve it.
    void* taken = take_one_returned_block(device, block_size);
    if (!taken) taken = from_every_list(device, block_size, stream);
    if (taken) {
      count(&Counters::at_peak_taken);
      return taken;
    }
    // Only the allocations that free memory could not serve count: one that a list served did not
    // wait, and counted, such allocations grew the arena by 1.8x at 16 MiB (16 threads with a stream
    // each on the H200), where the lists held the working set.
    ThreadState* thread = t_state;
    const bool grow_now =
        device.peak_growth.grow_now(block_size, thread ? &thread->at_peak_waits : nullptr, monotonic_ns());
    // This thread's own frees wait in its open batch until it fills: fenced now, they can come back.
    close_this_thread_batch(device);
    // Only growth would serve it. Wait when the fenced blocks, with the free memory, could. The fenced
    // bytes are asked first: the backend's stats walk every thread cache under locks (5% of the
    // wall-clock time of 16 threads with a stream each at 4 MiB, on the H200).
    const std::uint64_t fenced = device.fenced_bytes();
    if (grow_now) {
      past_because = &Counters::at_peak_past_by_rule;
    } else if (device.fences.can_give_back() &&
               (fenced >= block_size || fenced + backend.stats().bytes_cached >= block_size)) {
      past_because = &Counters::at_peak_past_after_wait;
      annotations::ScopedRange range(annotations::SlowEvent::fence_wait);
      // What the growth rule weighs (router/peak_growth.h), and what GPUSHIM_STATS reports.
      const std::uint64_t began_ns = monotonic_ns();
      const auto account_wait = [thread, counts, began_ns] {
        const std::uint64_t end = monotonic_ns();
        const std::uint64_t waited = end - began_ns;
        if (thread) thread->at_peak_waits.waited(waited, end);
        if (counts) counts->at_peak_wait_ns.fetch_add(waited, std::memory_order_relaxed);
      };
      std::uint64_t waited_ns = 0;
      do {
        // Waits for a thread that records fences meanwhile: with a try-lock, a 1 GiB allocation whose
        // fence another thread was about to record slept in 20 us steps (16 threads with a stream each
        // on the H200: a 41 us mean pair against 16 us before fences were shared).
        // Completed blocks go to the threads that freed them, this one among them, as a poll in
        // passing (a free's) gives them: the lists are where this allocation looks.
        return_unfenced_blocks(device, FreeFenceQueue::Poller::allocation_at_peak);
        void* p = take_free_block(device, block_size, stream);
        if (!p) p = from_every_list(device, block_size, stream);
        if (p) {
          account_wait();
          count(&Counters::at_peak_waited);
          return p;
        }
        if (!device.holds_fenced_blocks()) break;
        if (waited_ns < kNewPeakYieldForNs) std::this_thread::yield();
        else std::this_thread::sleep_for(kNewPeakPollInterval);
        waited_ns = monotonic_ns() - began_ns;
      } while (waited_ns < kNewPeakWaitNs);
      account_wait();
    }
  }
  // Whether it grew: the maps this thread made meanwhile (counted only under GPUSHIM_STATS).
  const std::uint64_t maps_before = t_maps_by_this_thread;
  void* grown = backend.allocate(block_size, stream);
  if (grown) {
    count(past_because);
    if (t_maps_by_this_thread != maps_before) count(&Counters::at_peak_past_mapped);
  }
  return grown;
}

void* allocate_under_pressure(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept {
  Allocator& backend = device.backend();
  if (ipc::any_exports()) free_blocks_importers_released();
  // Whatever waits: a poll may also find the work ordered again, so that the frees from here on are not
  // fenced.
  poll_stream_activity();
  return_blocks_of_polled_streams(device, FreeFenceQueue::Poller::allocation_in_need);
  take_all_returned_blocks(device);  // after the returns: they land in the lists
  if (void* p = backend.allocate(block_size, stream)) return p;

  close_all_thread_batches(device);
  close_all_stream_lists(device);
  device.fences.poll(FreeFenceQueue::Poller::allocation_in_need);
  // Each close polls in passing, which gives completed blocks to the threads that freed them: another
  // thread's open batch, closed here, landed in its owner's list and this allocation failed (the
  // end-to-end test AnotherThreadsOpenBatchIsCountedAndTakenUnderPressure, nineteenth session).
  take_all_returned_blocks(device);
  if (void* p = backend.allocate(block_size, stream)) return p;

  // Memory pressure: now waiting for the GPU is better than failing.
  if (device.fences.synchronize_all() > 0)
    if (void* p = backend.allocate(block_size, stream)) return p;

  std::size_t released = backend.release_cached();
  if (released)
    tracing::record(tracing::EventKind::cache_release, device.ordinal, 0, 0, released, device.properties.id);
  if (void* p = backend.allocate(block_size, stream)) return p;
  // The device's memory is exhausted: with GPUSHIM_SPILL=host the block comes from host memory instead
  // (docs/host-spill.md); without it this returns nullptr.
  return backend.allocate_spilled(block_size, stream);
}

namespace {

// The dump (docs/oom-dump.md). Only the first failure of the process writes it: later ones come from the
// program's own retries, and their state is the aftermath, not the cause.
std::string* g_dump_path = nullptr;      // never freed: set once at start
int g_dump_stack_depth = 0;
bool g_dump_no_unwinder = false;  // stacks were asked for, but no unwinder loads
std::uint64_t g_dump_start_ns = 0;
std::atomic<bool> g_dump_written{false};
StackStore g_stacks;
// Live blocks copied per shard lock: the writer's batches stay on no program thread's stack.
constexpr std::size_t kDumpBatch = 512;

tracing::DumpBlock dump_block(const LiveBlocks::Entry& entry, tracing::BackendId backend) noexcept {
  tracing::DumpBlock block;
  block.address = entry.address;
  block.size = entry.block.requested;
  block.stream = entry.block.stream;
  block.time_ns = entry.block.time_ns;
  block.device = entry.block.device;
  block.async = entry.block.async_origin;
  block.backend = backend;
  block.frame_count = g_stacks.frames_of(entry.block.stack, &block.frames);
  return block;
}

void write_dump(DeviceState& failed_on, std::size_t requested, StreamHandle stream) noexcept {
  static tracing::OomDumpWriter writer;  // 64 KiB: static, the failing thread's stack may be small
  static LiveBlocks::Entry batch[kDumpBatch];
  if (!writer.open(g_dump_path->c_str(), g_dump_start_ns, g_dump_stack_depth,
                   g_dump_no_unwinder ? tracing::format::kFlagNoUnwinder : 0)) {
    log(LogLevel::warn, "GPUSHIM_OOM_DUMP: cannot write %s (%s); no dump", g_dump_path->c_str(),
        writer.path()[0] ? std::strerror(errno) : "path too long");
    writer.close();
    return;
  }
  tracing::BackendId backends[kMaxDevices];
  std::uint64_t blocks = 0;
  for (int d = 0; d < kMaxDevices; ++d) {
    DeviceState* device = g_devices[d].load(std::memory_order_acquire);
    backends[d] = device ? device->properties.id : tracing::BackendId::unknown;
    if (!device) continue;
    const AllocatorStats stats = device->backend().stats();
    tracing::format::DeviceStateRecord state{};
    state.device = d;
    state.backend = std::uint8_t(device->properties.id);
    std::uint64_t live_bytes = 0, live_count = 0;
    live_blocks().totals(d, &live_bytes, &live_count);
    state.live_bytes = live_bytes;
    state.live_blocks = live_count;
    state.reserved_bytes = stats.bytes_reserved;
    state.cached_bytes = stats.bytes_cached;
    state.largest_free = stats.largest_free_block;
    state.pending_free = pending_bytes(*device);
    state.limit = device->properties.limit;
    state.failed_request = device == &failed_on ? requested : 0;
    writer.device(state);
  }
  for (std::size_t part = 0; part < LiveBlocks::kParts; ++part) {
    for (std::size_t from = 0; from != ~std::size_t{0};) {
      const std::size_t copied = live_blocks().copy_live(part, from, batch, kDumpBatch, &from);
      for (std::size_t i = 0; i < copied; ++i) {
        const int d = batch[i].block.device;
        writer.block(dump_block(batch[i], d >= 0 && d < kMaxDevices ? backends[d] : tracing::BackendId::unknown));
      }
      blocks += copied;
    }
  }
  tracing::DumpBlock request;
  request.size = requested;
  request.stream = stream;
  request.time_ns = monotonic_ns();
  request.device = failed_on.ordinal;
  request.backend = failed_on.properties.id;
  std::uint64_t frames[kMaxTraceStack];
  if (g_dump_stack_depth > 0) {
    request.frames = frames;
    request.frame_count = tracing::capture_stack(frames, g_dump_stack_depth, 0);
  }
  writer.failure(request);
  if (writer.close())
    log(LogLevel::warn, "out-of-memory dump: %llu live blocks written to %s (read it with `gpushim trace summary`)",
        static_cast<unsigned long long>(blocks), writer.path());
  else
    log(LogLevel::warn, "GPUSHIM_OOM_DUMP: writing %s failed (%s); the dump is incomplete", writer.path(),
        std::strerror(errno));
}

}  // namespace

bool g_dump_armed = false;

void arm_oom_dump(const std::string& path, int stack_depth) noexcept {
  if (path.empty() || g_dump_path) return;
  g_dump_path = new (std::nothrow) std::string();
  if (!g_dump_path) return;
  try {
    *g_dump_path = path;
  } catch (...) {
    return;
  }
  g_dump_start_ns = monotonic_ns();
  if (stack_depth > 0 && tracing::load_unwinder() && g_stacks.init(stack_depth)) {
    g_dump_stack_depth = stack_depth;
  } else if (stack_depth > 0) {
    g_dump_no_unwinder = true;
    log(LogLevel::warn, "GPUSHIM_OOM_DUMP_STACK: no stack unwinder (or no memory for the stacks); the dump will have no stacks");
  }
  g_dump_armed = true;
}

void stamp_for_dump(LiveBlock* block) noexcept {
  block->time_ns = monotonic_ns();
  if (g_dump_stack_depth > 0) {
    std::uint64_t frames[kMaxTraceStack];
    // Skip stamp_for_dump itself; serve() and the entry point stay, the tools skip gpushim's frames.
    const int count = tracing::capture_stack(frames, g_dump_stack_depth, 0);
    block->stack = g_stacks.intern(frames, count);
  }
}

void report_out_of_memory(DeviceState& device, std::size_t requested, StreamHandle stream, bool injected) noexcept {
  if (g_dump_armed && !g_dump_written.exchange(true, std::memory_order_acq_rel)) write_dump(device, requested, stream);
  bool expected = false;
  if (!device.in_oom_burst.compare_exchange_strong(expected, true)) return;  // once per burst
  try {
    AllocatorStats stats = device.backend().stats();
    OomReport report;
    report.device = device.ordinal;
    report.backend = device.properties.name;
    report.requested = requested;
    report.injected = injected;
    live_blocks().totals(device.ordinal, &report.live_bytes, &report.live_blocks);
    report.reserved = stats.bytes_reserved;
    report.cached = stats.bytes_cached;
    report.pending_free = pending_bytes(device);
    report.largest_free = stats.largest_free_block;
    report.limit = device.properties.limit;
    report.spill_limit = device.properties.spill_limit;
    report.spilled = stats.bytes_spilled;
    report.spill_reserved = stats.spill_reserved;
    if (device.properties.placed) {
      char placement[256];
      report.placement = describe_placement(*device.properties.placed, placement, sizeof placement);
    }
    for (const auto& entry : live_blocks().largest(device.ordinal, kLargestLiveInReport))
      report.largest_live.push_back({entry.address, entry.block.requested});
    for (const std::string& line : format_oom_report(report)) log(LogLevel::warn, "%s", line.c_str());
  } catch (...) {
    log(LogLevel::warn, "out of memory on device %d: requested %zu bytes", device.ordinal, requested);
  }
}

}  // namespace gpushim::router
