// Blocks held for IPC importers (router/held_for_importers.h).
#include "router/held_for_importers.h"

#include <vector>

#include "ipc/cuda_ipc.h"
#include "router/router_state.h"

namespace gpushim::router {

std::mutex g_held_for_importers_lock;
std::unordered_map<CUdeviceptr, LiveBlock>& held_for_importers() {
  static auto* held = new std::unordered_map<CUdeviceptr, LiveBlock>();
  return *held;
}

bool is_held_for_importers(CUdeviceptr p) noexcept {
  if (!ipc::any_exports()) return false;
  std::lock_guard<std::mutex> guard(g_held_for_importers_lock);
  return held_for_importers().count(p) != 0;
}

namespace {

// True when `p` (just erased from the live table) is still open in another process: then it is kept.
bool hold_for_importers(CUdeviceptr p, const LiveBlock& block) noexcept {
  if (!ipc::hold_freed_block(p)) return false;
  std::lock_guard<std::mutex> guard(g_held_for_importers_lock);
  try {
    held_for_importers().emplace(p, block);
  } catch (...) {
    // Not recorded: the block is held for the life of the process, which is safe.
  }
  return true;
}

}  // namespace

void free_blocks_importers_released() noexcept {
  std::vector<CUdeviceptr> released;
  if (!ipc::take_released_blocks(&released)) return;
  for (CUdeviceptr p : released) {
    LiveBlock block;
    {
      std::lock_guard<std::mutex> guard(g_held_for_importers_lock);
      auto it = held_for_importers().find(p);
      if (it == held_for_importers().end()) continue;
      block = it->second;
      held_for_importers().erase(it);
    }
    DeviceState* device = g_devices[block.device].load(std::memory_order_acquire);
    if (device) give_back(*device, FreedBlock{reinterpret_cast<void*>(p), block.block_size, 0});
  }
}

bool hold_if_imported(CUdeviceptr p, const LiveBlock& block) noexcept {
  free_blocks_importers_released();
  return hold_for_importers(p, block);
}

}  // namespace gpushim::router
