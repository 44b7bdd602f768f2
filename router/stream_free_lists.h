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
  return device.stream_shards[((key >> 4) * 0x9E3779B97F4A7C15ull) >> 60];
}

static inline void* take_from_stream_list(DeviceState& device, CUstream stream, std::size_t block_size) noexcept {
  StreamShard& shard = shard_of(device, stream);
  std::lock_guard<std::mutex> guard(shard.lock);
  auto list = shard.lists.find(stream);
  if (list == shard.lists.end()) return nullptr;
  auto block = list->second.by_size.find(block_size);
  if (block == list->second.by_size.end()) return nullptr;
  void* p = block->second.ptr;
  list->second.bytes -= block_size;
  list->second.by_size.erase(block);
  return p;
}

// Moves one stream's async-freed blocks to the fence queue (one event on the stream).
void close_stream_list(DeviceState& device, CUstream stream) noexcept;
void close_all_stream_lists(DeviceState& device) noexcept;
std::uint64_t stream_list_bytes(DeviceState& device) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
