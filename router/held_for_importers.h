// Blocks the program freed while another process has them open (cuIpcOpenMemHandle). The driver keeps
// cuMemAlloc memory alive until the last importer closes it; so does gpushim: ipc counts the importers
// (ipc/export_registry.h, "Holders"), the router keeps the block out of the backend until they are
// gone, then frees it as cuMemFree would. None of this runs unless the process exported something.
#pragma once

#include <mutex>
#include <unordered_map>

#include <cuda.h>

#include "ipc/cuda_ipc.h"
#include "router/live_block_table.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

extern std::mutex g_held_for_importers_lock;
std::unordered_map<CUdeviceptr, LiveBlock>& held_for_importers();

bool is_held_for_importers(CUdeviceptr p) noexcept;
void free_blocks_importers_released() noexcept;
// True when `p` (just erased from the live table) is open in another process: then it is kept. Blocks
// their importers closed since go back first.
bool hold_if_imported(CUdeviceptr p, const LiveBlock& block) noexcept;

// Every free asks; inline, so a process that never exported pays one relaxed load and no call.
inline bool held_after_free(CUdeviceptr p, const LiveBlock& block) noexcept {
  return ipc::any_exports() && hold_if_imported(p, block);
}

}  // namespace gpushim::router

#pragma GCC visibility pop
