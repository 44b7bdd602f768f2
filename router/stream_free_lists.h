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

// Adds a block freed on `stream` to its list; `*full` says whether the list now holds a batch: 256 blocks,
// or 64 MiB in more than one block. A single larger block stays, reusable at once on its stream until
// the stream's next free closes both: closed at once, it cost every stream-ordered pair of 64 MiB or more
// an event record and a fresh block, ~2 us a pair at 1 GiB, 2-3x the driver's pool (docs/perf-notes.md,
// thirty-first session). A stream's list so holds at most a batch, or one block. Without
// `new_list_context`, only to a list that exists (false when there is none); with it, a missing list is
// made, keeping that context for its fence event.
static inline bool add_to_stream_list(DeviceState& device, CUstream stream, const FreedBlock& freed,
                                      const CUcontext* new_list_context, bool* full) noexcept {
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
    const std::size_t blocks = list->second.blocks.size();
    *full = blocks >= kBatchMaxBlocks || (list->second.bytes >= kBatchMaxBytes && blocks > 1);
  } catch (...) {
    // No host memory: the block is held forever, which is safe.
  }
  return true;
}

// Moves one stream's async-freed blocks to the fence queue (one event on the stream).
void close_stream_list(DeviceState& device, CUstream stream) noexcept;
void close_all_stream_lists(DeviceState& device) noexcept;
std::uint64_t stream_list_bytes(DeviceState& device) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
