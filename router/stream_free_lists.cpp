// The async free lists of each device (router/stream_free_lists.h): closing them into the fence queue,
// and what they hold.
#include "router/stream_free_lists.h"

#include <vector>

namespace gpushim::router {

void close_stream_list(DeviceState& device, CUstream stream) noexcept {
  std::vector<FreedBlock> blocks;
  CUcontext context = nullptr;
  {
    StreamShard& shard = shard_of(device, stream);
    std::lock_guard<SpinLock> guard(shard.lock);
    auto list = shard.lists.find(stream);
    if (list == shard.lists.end()) return;
    blocks = std::move(list->second.blocks);
    context = list->second.context;
    shard.lists.erase(list);
  }
  device.fences.close_stream_batch(std::move(blocks), context, reinterpret_cast<StreamHandle>(stream));
}

void close_all_stream_lists(DeviceState& device) noexcept {
  for (StreamShard& shard : device.stream_shards) {
    std::vector<CUstream> streams;
    {
      std::lock_guard<SpinLock> guard(shard.lock);
      try {
        for (auto& entry : shard.lists) streams.push_back(entry.first);
      } catch (...) {
      }
    }
    for (CUstream stream : streams) close_stream_list(device, stream);
  }
}

std::uint64_t stream_list_bytes(DeviceState& device) noexcept {
  std::uint64_t bytes = 0;
  for (StreamShard& shard : device.stream_shards) {
    std::lock_guard<SpinLock> guard(shard.lock);
    for (auto& entry : shard.lists) bytes += entry.second.bytes;
  }
  return bytes;
}

}  // namespace gpushim::router
