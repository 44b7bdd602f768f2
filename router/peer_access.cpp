#include "router/peer_access.h"

#include <mutex>

#include "diagnostics/log.h"
#include "driver/real_driver.h"
#include "router/access_grants.h"
#include "router/router_state.h"

namespace gpushim::router {
namespace {

std::mutex& access_lock() {
  static auto* lock = new std::mutex();  // never destroyed: program threads may call after exit() began
  return *lock;
}
AccessGrants& grants() {
  static auto* table = new AccessGrants();
  return *table;
}

// The device ordinal of `context`, which need not be current; -1 when the driver does not know it.
int ordinal_of(CUcontext context) noexcept {
  const RealDriver& driver = real_driver();
  CUcontext current = nullptr;
  if (!context || driver.cuCtxGetCurrent(&current) != CUDA_SUCCESS) return -1;
  bool pushed = false;
  if (current != context) {
    if (driver.cuCtxPushCurrent(context) != CUDA_SUCCESS) return -1;
    pushed = true;
  }
  CUdevice device = -1;
  const CUresult rc = driver.cuCtxGetDevice(&device);
  if (pushed) {
    CUcontext popped = nullptr;
    driver.cuCtxPopCurrent(&popped);
  }
  return rc == CUDA_SUCCESS ? static_cast<int>(device) : -1;
}

int current_ordinal() noexcept {
  CUcontext current = nullptr;
  if (real_driver().cuCtxGetCurrent(&current) != CUDA_SUCCESS) return -1;
  return ordinal_of(current);
}

// The devices whose default or current pool `pool` is; -1 when none is.
int owner_of_pool(CUmemoryPool pool) noexcept {
  const RealDriver& driver = real_driver();
  int count = 0;
  if (!pool || !driver.cuDeviceGetCount || driver.cuDeviceGetCount(&count) != CUDA_SUCCESS) return -1;
  for (int d = 0; d < count && d < kMaxDevices; ++d) {
    CUdevice device = 0;
    if (driver.cuDeviceGet(&device, d) != CUDA_SUCCESS) continue;
    CUmemoryPool candidate = nullptr;
    if (driver.cuDeviceGetDefaultMemPool && driver.cuDeviceGetDefaultMemPool(&candidate, device) == CUDA_SUCCESS &&
        candidate == pool)
      return d;
    if (driver.cuDeviceGetMemPool && driver.cuDeviceGetMemPool(&candidate, device) == CUDA_SUCCESS &&
        candidate == pool)
      return d;
  }
  return -1;
}

void change(int owner, int accessor, AccessGrants::Source source, bool on) noexcept {
  std::lock_guard<std::mutex> guard(access_lock());
  const AccessGrants::Change result = grants().set(owner, accessor, source, on);
  if (result == AccessGrants::Change::none) return;
  DeviceState* state = g_devices[owner].load(std::memory_order_acquire);
  if (!state || !state->properties.access) return;  // applied when the backend is built, or nothing to do
  if (result == AccessGrants::Change::granted) {
    if (!state->properties.access->grant_access(accessor))
      log(LogLevel::warn, "device %d: could not give device %d access to gpushim's memory", owner, accessor);
  } else {
    state->properties.access->revoke_access(accessor);
  }
}

}  // namespace

void on_peer_access_enabled(CUcontext peer_context) noexcept {
  change(ordinal_of(peer_context), current_ordinal(), AccessGrants::peer_context, true);
}

void on_peer_access_disabled(CUcontext peer_context) noexcept {
  change(ordinal_of(peer_context), current_ordinal(), AccessGrants::peer_context, false);
}

void on_pool_access_set(CUmemoryPool pool, const CUmemAccessDesc* map, std::size_t count) noexcept {
  if (!map) return;
  const int owner = owner_of_pool(pool);
  if (owner < 0) return;  // a pool the program made itself: its blocks are the driver's, not ours
  for (std::size_t i = 0; i < count; ++i) {
    if (map[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE) continue;
    // Read-only pool access is served as read-write: more than native, never less.
    change(owner, map[i].location.id, AccessGrants::pool, map[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE);
  }
}

void apply_access_grants(int owner, DeviceAccess& access) noexcept {
  std::lock_guard<std::mutex> guard(access_lock());
  for (int accessor = 0; accessor < kMaxDevices; ++accessor)
    if (grants().granted(owner, accessor)) access.grant_access(accessor);
}

}  // namespace gpushim::router
