// cuIpcGetMemHandle / cuIpcOpenMemHandle / cuIpcCloseMemHandle for gpushim memory (the shim's hooks in
// shim/ipc_hooks.cpp call these; docs/ecosystem.md tells the whole story).
//
// Export: the block's physical chunks get a POSIX fd each (cuMemExportToShareableHandle), the export is
// recorded, the exporter's socket server starts, and the program gets a gpushim handle (ipc_handle.h).
// Import: decode, fetch the fds from the exporter (export_server.h), cuMemImportFromShareableHandle +
// cuMemAddressReserve + cuMemMap + cuMemSetAccess, and return the address of the block's first byte.
// As with the driver, the importer gets the exported *block* (for cuMemAlloc memory: the allocation),
// whichever pointer inside it was exported.
// The mempool backend's blocks live in a driver pool created shareable: export sends the pool's fd and
// the block's cuMemPoolExportPointer data; the importer imports the pool once and the pointer.
#pragma once

#include <atomic>
#include <cstddef>
#include <vector>

#include <cuda.h>

namespace gpushim::ipc {

struct BlockToExport {
  CUdeviceptr base = 0;
  std::size_t size = 0;  // the size the program asked for
  int device = -1;
};

// Exports a gpushim block. *handled is false (and nothing happened) when the block's memory is not
// exportable memory (e.g. the passthrough backend's cuMemAlloc blocks): then the caller asks the driver.
CUresult export_block(CUipcMemHandle* out, const BlockToExport& block, bool* handled) noexcept;

// True for a handle made by export_block (in any process); others go to the driver.
bool is_gpushim_handle(const CUipcMemHandle& handle) noexcept;

// Maps the exported block into this process. Opening the same handle again returns the same address
// (counted: each open needs a close).
CUresult open_handle(CUdeviceptr* out, const CUipcMemHandle& handle, unsigned int flags) noexcept;

// *handled false when `p` is not an address open_handle returned (then the caller asks the driver).
// Tells the exporter, which may then free the block (export_registry.h, "Holders").
CUresult close_handle(CUdeviceptr p, bool* handled) noexcept;

// ---- the exporter's frees (the router calls these) ----
// True once this process has exported anything: only then are the two calls below worth making.
// Inline: every free asks (one relaxed load).
namespace detail {
extern std::atomic<bool> g_ever_exported __attribute__((visibility("hidden")));
}
inline bool any_exports() noexcept { return detail::g_ever_exported.load(std::memory_order_relaxed); }
// The program freed gpushim block `base`. True when another process still has it open: the caller
// keeps the block (neither reuses nor frees it) until take_released_blocks() returns it, as the
// driver keeps cuMemAlloc memory alive while it is open elsewhere.
bool hold_freed_block(CUdeviceptr base) noexcept;
// Appends the held blocks no process has open any more (closed, or the importer exited); true if any.
// A lock only while something is held.
bool take_released_blocks(std::vector<CUdeviceptr>* out) noexcept;

}  // namespace gpushim::ipc
