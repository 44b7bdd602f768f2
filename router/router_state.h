// What the router's files share (private to router/; router/router.h is the interface): the state of
// each device, made on its first request, and the process-wide globals the request flow, the
// out-of-memory path, the exit statistics and the fork handler all reach.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include <cuda.h>

#include "allocators/allocator.h"
#include "allocators/backend_stack.h"
#include "diagnostics/hot_tls.h"
#include "router/cuda_fence_events.h"
#include "router/free_fence_queue.h"
#include "router/live_blocks.h"
#include "router/peak_growth.h"
#include "router/returned_blocks.h"
#include "router/spin_lock.h"

// The router was one file whose state had internal linkage. Hidden visibility keeps what its files now
// share out of libgpushim.so's symbol table, and lets -fPIC code reach these globals directly, as it did
// then, instead of loading their address from the GOT on every call.
#pragma GCC visibility push(hidden)

namespace gpushim::router {

constexpr int kMaxDevices = 64;          // ordinals beyond this are passed to the driver untouched
// Async free lists, sharded by stream: no device-wide lock. 64, not 16: with a stream per thread, 16
// threads' streams hashed into 16 shards share a shard's lock in most processes (docs/perf-notes.md,
// thirty-first session).
constexpr unsigned kStreamShardBits = 6;
constexpr std::size_t kStreamShards = std::size_t{1} << kStreamShardBits;

// Async-freed blocks of one stream: reusable at once on that stream (same rounded size), and handed to
// the fence queue (one event on the stream) when the list grows past a batch or memory runs short.
// A flat list, newest last: it holds at most a batch or one block (add_to_stream_list,
// router/stream_free_lists.h), and in a loop of allocations and frees on one stream the block asked for
// is the last one freed. A hash multimap by size cost a node allocation per free and a hash per call:
// 938 instructions a cuMemAllocAsync+cuMemFreeAsync pair on the CPU guard, where a cuMemAlloc pair takes
// ~490 (docs/perf-notes.md, thirty-first session).
struct StreamFreeList {
  CUcontext context = nullptr;
  std::vector<FreedBlock> blocks;
  std::size_t bytes = 0;
  std::uint32_t last_free_age = 0;  // StreamListAges::age at the list's last free
};

// What ages a quiet stream's list out (close_idle_stream_lists, router/stream_free_lists.h): a free
// stamps its list with the current age; an idle check that finds the age older than
// GPUSHIM_STREAM_LIST_IDLE starts the next one and closes every list stamped before the age that
// ended. So a list with no free closes between one and two idle times later, and a free costs one
// relaxed load, never a clock read. Without it a stream's list held its blocks until the stream freed
// again, memory ran short or the stream was destroyed: a quiet stream kept up to a batch, or one block
// of any size, where neither the other streams nor the release threshold could see it.
struct StreamListAges {
  explicit StreamListAges(std::uint64_t idle_ns) : idle_ns(idle_ns) {}
  const std::uint64_t idle_ns;  // GPUSHIM_STREAM_LIST_IDLE
  std::atomic<std::uint32_t> age{0};
  std::atomic<std::uint64_t> age_began_ns{0};
};
// The shard's lock guards a few loads and stores (a growth of the list's vector at most): a spin lock,
// as the live-block table's shards, where a pthread mutex was a third of the list's instructions.
struct alignas(64) StreamShard {
  SpinLock lock;
  std::unordered_map<CUstream, StreamFreeList> lists;
};

struct DeviceState {
  // `built.backend` is not null (device_state() checks).
  // `fence_delay`: GPUSHIM_FENCE_DELAY (FreeFenceQueue's record_after).
  // `stream_list_idle`: GPUSHIM_STREAM_LIST_IDLE (StreamListAges).
  DeviceState(int ordinal, BackendStack built, const std::atomic<int>& captures, std::chrono::nanoseconds fence_delay,
              std::chrono::nanoseconds stream_list_idle)
      : ordinal(ordinal), properties(built.properties), assembly(std::move(built)),
        events(ordinal, captures, properties.driver_backed), owners(ordinal),
        fences(*assembly.backend, events, properties.fenced ? &owners : nullptr,
               properties.stream_ordered ? SIZE_MAX : kOwnBlockThroughCacheBytes, fence_delay),
        stream_list_ages(static_cast<std::uint64_t>(stream_list_idle.count())) {}
  const int ordinal;
  const BackendProperties properties;  // what requests read: plain values, no virtual call
  BackendStack assembly;
  CudaFenceEvents events;
  // Where completed fenced blocks go first; not for a backend that orders its own frees (passthrough):
  // there a cuMemAllocAsync block is the driver pool's, whose cuMemFree does not wait for the GPU, and a
  // thread's list handed such blocks to cuMemAlloc callers, whose cuMemFree must wait (alloc_torture
  // under passthrough on the H200: a word overwritten while a kernel read it, thirteenth session).
  ThreadBlockOwners owners;
  FreeFenceQueue fences;
  StreamShard stream_shards[kStreamShards];
  StreamListAges stream_list_ages;
  std::atomic<bool> in_oom_burst{false};
  // When the idle checks last ran after a synchronization of this device's context
  // (router::after_context_synchronize): at most once a millisecond.
  std::atomic<std::uint64_t> synchronize_checked_ns{0};
  // Whether an allocation that found the backend at its peak while fenced blocks waited grows at once
  // (router/out_of_memory.cpp, allocate_without_new_peak).
  PeakGrowth peak_growth;
  // Bytes in the threads' marked batches (router/marked_batches.h): counted per batch, read only where an
  // allocation weighs waiting for fenced blocks against growing.
  std::atomic<std::uint64_t> marked_bytes{0};
  std::atomic<std::uint64_t> marked_batches{0}, marked_blocks_passed{0};  // GPUSHIM_STATS (FenceTimes)
  // Freed blocks that wait for their streams, either way: in the fence queue or in marked batches.
  bool holds_fenced_blocks() const noexcept {
    return fences.holds_blocks() || marked_bytes.load(std::memory_order_relaxed) != 0;
  }
  std::uint64_t fenced_bytes() const noexcept {
    return fences.pending_bytes() + marked_bytes.load(std::memory_order_relaxed);
  }
  Allocator& backend() { return *assembly.backend; }
  bool fenced() const { return properties.fenced; }
};

// Everything global is either trivially destructible or allocated and never freed: program threads and
// static destructors may still call cuMemFree after exit() has begun.
extern std::atomic<int> g_active_captures;

extern std::atomic<DeviceState*> g_devices[kMaxDevices];
extern std::mutex g_devices_lock;  // creation only
// Every live gpushim block of the process. Made on first use (a program may allocate from a static
// constructor before this library's own have run) and never freed. Inline: serve and the free paths
// reach it on every call (a call here measured ~10 instructions a pair).
inline LiveBlocks& live_blocks() {
  static LiveBlocks* table = new LiveBlocks();
  return *table;
}

extern std::atomic<std::uint64_t> g_stream_generation;  // bumped when a stream is destroyed: stale caches
extern std::atomic<std::uint64_t> g_fork_generation;    // bumped in a forked child: parent handles are void
extern bool g_forked_child;

extern std::mutex g_captures_lock;
std::vector<CUstream>& capturing_streams();


// The state of device `ordinal`, made on its first request (device_state.cpp).
DeviceState* device_state(int ordinal, CUcontext context) noexcept;
// The device ordinal of a context that may not be current (-1 where the driver cannot say).
int device_ordinal_of(CUcontext context) noexcept;
// The device of a context that may not be current, made on its first request as device_state's.
DeviceState* device_of_context(CUcontext context) noexcept;
// The state of device `ordinal` where gpushim serves it already, else nullptr: never makes one.
DeviceState* served_device(int ordinal) noexcept;

// cuMemFree's end (router.cpp); a block held for importers goes back through it once they are gone.
void give_back(DeviceState& device, const FreedBlock& freed) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
