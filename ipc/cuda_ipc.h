// cuIpcGetMemHandle / cuIpcOpenMemHandle / cuIpcCloseMemHandle for gpushim memory (the shim's hooks in
// shim/ipc_hooks.cpp call these; docs/ecosystem.md tells the whole story).
//
// Export: the block's physical chunks get a POSIX fd each (cuMemExportToShareableHandle), the export is
// recorded, the exporter's socket server starts, and the program gets a gpushim handle (ipc_handle.h).
// Import: decode, fetch the fds from the exporter (export_server.h), cuMemImportFromShareableHandle +
// cuMemAddressReserve + cuMemMap + cuMemSetAccess, and return the address of the block's first byte.
// As with the driver, the importer gets the exported *block* (for cuMemAlloc memory: the allocation),
// whichever pointer inside it was exported.
#pragma once

#include <cstddef>

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
CUresult close_handle(CUdeviceptr p, bool* handled) noexcept;

}  // namespace gpushim::ipc
