// The async free lists of each device (router/stream_free_lists.h): closing them into the fence queue,
// and what they hold.
#include "router/stream_free_lists.h"

#include <vector>

#include "diagnostics/monotonic_clock.h"

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

void close_idle_stream_lists(DeviceState& device) noexcept {
  StreamListAges& ages = device.stream_list_ages;
  const std::uint64_t now = monotonic_ns();
  std::uint64_t began = ages.age_began_ns.load(std::memory_order_relaxed);
  if (now - began < ages.idle_ns) return;
  if (!ages.age_began_ns.compare_exchange_strong(began, now, std::memory_order_relaxed)) return;  // another thread ages
  const std::uint32_t ended = ages.age.fetch_add(1, std::memory_order_relaxed);
  for (StreamShard& shard : device.stream_shards) {
    std::vector<StreamFreeList> quiet;
    {
      std::lock_guard<SpinLock> guard(shard.lock);
      for (auto list = shard.lists.begin(); list != shard.lists.end();) {
        // Stamped `ended` or the age begun just now: freed within the last idle time.
        const std::uint32_t stamp = list->second.last_free_age;
        if (stamp == ended || stamp == ended + 1) {
          ++list;
          continue;
        }
        try {
          quiet.push_back(std::move(list->second));
        } catch (...) {
          break;  // no host memory: the rest wait for the next age
        }
        list = shard.lists.erase(list);
      }
    }
    // Behind a device fence, not an event on the stream as close_stream_list records: this thread does
    // not use the stream, which its owner may be destroying now. The device fence covers every stream.
    for (StreamFreeList& list : quiet) device.fences.close_device_batch(std::move(list.blocks), list.context);
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
