// The state of each device (router/router_state.h), made on the first request that names the device and
// never freed.
#include <new>

#include "allocators/thread_cache_allocator.h"
#include "config/settings.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"
#include "driver/scoped_context.h"
#include "router/peer_access.h"
#include "router/router_state.h"

namespace gpushim::router {

// A round of a thread's own completed blocks goes through its cache only where the cache keeps a whole
// batch of them (router/free_fence_queue.h, kOwnBlockThroughCacheBytes): else it overflowed into the arena.
static_assert(ThreadCacheAllocator::kMaxBlocksPerClass >= kBatchMaxBlocks &&
                  kOwnBlockThroughCacheBytes * kBatchMaxBlocks <= ThreadCacheAllocator::kClassBytes,
              "the thread cache no longer keeps a whole batch of the blocks kOwnBlockThroughCacheBytes sends it");
static_assert(2 * kOwnBlockThroughCacheBytes * kBatchMaxBlocks > ThreadCacheAllocator::kClassBytes,
              "the thread cache keeps whole batches of larger blocks now: kOwnBlockThroughCacheBytes may grow");

std::atomic<DeviceState*> g_devices[kMaxDevices];
std::mutex g_devices_lock;

DeviceState* device_state(int ordinal, CUcontext context) noexcept {
  if (ordinal < 0 || ordinal >= kMaxDevices) return nullptr;
  DeviceState* state = g_devices[ordinal].load(std::memory_order_acquire);
  if (!state) {
    std::lock_guard<std::mutex> guard(g_devices_lock);
    state = g_devices[ordinal].load(std::memory_order_acquire);
    if (!state) {
      BackendStack built = backend_for_device(ordinal);
      if (!built.backend) return nullptr;  // no host memory: requests go to the driver
      DeviceState* created = nullptr;
      try {
        created = new DeviceState(ordinal, std::move(built), g_active_captures,
                                  std::chrono::nanoseconds(settings().fence_delay_ns),
                                  std::chrono::nanoseconds(settings().stream_list_idle_ns));
      } catch (...) {
        return nullptr;
      }
      g_devices[ordinal].store(created, std::memory_order_release);  // never freed (exit-time safety)
      // Peer access the program enabled before this device's first block.
      if (created->properties.access) apply_access_grants(ordinal, *created->properties.access);
      state = created;
      log(LogLevel::info, "device %d: backend %s", ordinal, created->properties.name);
    }
  }
  if (context) state->events.set_default_context(context);
  return state;
}

int device_ordinal_of(CUcontext context) noexcept {
  ScopedContext scope(context);
  CUdevice device = -1;
  if (!scope.ok() || real_driver().cuCtxGetDevice(&device) != CUDA_SUCCESS) return -1;
  return static_cast<int>(device);
}

DeviceState* device_of_context(CUcontext context) noexcept {
  const int ordinal = device_ordinal_of(context);
  return ordinal >= 0 ? device_state(ordinal, context) : nullptr;
}

DeviceState* served_device(int ordinal) noexcept {
  return ordinal >= 0 && ordinal < kMaxDevices ? g_devices[ordinal].load(std::memory_order_acquire) : nullptr;
}

}  // namespace gpushim::router
