// The async free lists of each device (StreamFreeList, router/router_state.h): blocks freed with
// cuMemFreeAsync wait in their stream's list, reusable at once on that stream, until the list is closed
// into the fence queue. take_from_stream_list runs on every cuMemAllocAsync, so it is inline here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>

#include <cuda.h>

#include "router/router_state.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

// static, as in thread_state.h: inlined into serve as it was while file-local in router.cpp.
static inline StreamShard& shard_of(DeviceState& device, CUstream stream) {
  auto key = reinterpret_cast<std::uintptr_t>(stream);
  return device.stream_shards[((key >> 4) * 0x9E3779B97F4A7C15ull) >> (64 - kStreamShardBits)];
}

static inline void* take_from_stream_list(DeviceState& device, CUstream stream, std::size_t block_size) noexcept {
  StreamShard& shard = shard_of(device, stream);
  std::lock_guard<SpinLock> guard(shard.lock);
  auto list = shard.lists.find(stream);
  if (list == shard.lists.end()) return nullptr;
  std::vector<FreedBlock>& blocks = list->second.blocks;
  // Newest first; erased in place, so the rest keep their order (at most a batch to move).
  for (std::size_t i = blocks.size(); i-- > 0;) {
    if (blocks[i].bytes != block_size) continue;
    void* p = blocks[i].ptr;
    list->second.bytes -= block_size;
    blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(i));
    return p;
  }
  return nullptr;
}

// Adds a block freed on `stream` to its list, stamped with the device's list age; `*full` says whether
// the list now holds a batch (stream_list_full, router/free_fence_queue.h: a single larger block stays,
// reusable at once on its stream until its next free closes both). A stream's list so holds at most a
// batch, or one block, and for a quiet stream only until close_idle_stream_lists ages it out. Without
// `new_list_context`, only to a list that exists (false when there is none); with it, a missing list is
// made, keeping that context for its fence event. Always inlined: left to GCC once the age stamp was
// added, it became a call of its own with the map's find out of line, 43 more instructions a pair.
__attribute__((always_inline)) static inline bool add_to_stream_list(DeviceState& device, CUstream stream,
                                                                     const FreedBlock& freed,
                                                                     const CUcontext* new_list_context,
                                                                     bool* full) noexcept {
  StreamShard& shard = shard_of(device, stream);
  std::lock_guard<SpinLock> guard(shard.lock);
  try {
    auto list = shard.lists.find(stream);
    if (list == shard.lists.end()) {
      if (new_list_context == nullptr) return false;
      list = shard.lists.emplace(stream, StreamFreeList{*new_list_context, {}, 0}).first;
    }
    list->second.blocks.push_back(freed);
    list->second.bytes += freed.bytes;
    list->second.last_free_age = device.stream_list_ages.age.load(std::memory_order_relaxed);
    *full = stream_list_full(list->second.blocks.size(), list->second.bytes);
  } catch (...) {
    // No host memory: the block is held forever, which is safe.
  }
  return true;
}

// Moves one stream's async-freed blocks to the fence queue (one event on the stream).
void close_stream_list(DeviceState& device, CUstream stream) noexcept;
void close_all_stream_lists(DeviceState& device) noexcept;
// The idle check's part (every 4,096 frees of a thread, and after a context synchronization: router.cpp,
// after_context_synchronize): once GPUSHIM_STREAM_LIST_IDLE has passed since the current age began,
// starts the next and closes the lists with no free in the age that ended, each behind a device fence
// (StreamListAges, router/router_state.h). Cheap when not due: one clock read.
void close_idle_stream_lists(DeviceState& device) noexcept;
std::uint64_t stream_list_bytes(DeviceState& device) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
