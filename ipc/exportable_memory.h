// What IPC needs from the memory layer: which physical allocation backs an address, and word when one
// is released. The provider that creates physical memory implements ExportableMemory and registers
// itself; IPC never calls a provider otherwise.
//
// Requirement on the provider (CudaPeerProvider): cuMemCreate must ask for shareable handles,
//   prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
// otherwise cuMemExportToShareableHandle fails and cuIpcGetMemHandle returns that error (logged once).
// The flag costs nothing at allocation time; it only lets the driver hand out an fd later.
#pragma once

#include <cstddef>

#include <cuda.h>

namespace gpushim::ipc {

class ExportableMemory {
 public:
  virtual ~ExportableMemory() = default;

  // The physical allocation mapped at `p`: its handle and the start and size of the one mapping it was
  // mapped with. False when this source has nothing mapped at `p`. Called only when a program exports
  // (cuIpcGetMemHandle), so a lock and a map lookup are fine.
  virtual bool physical_handle_for(CUdeviceptr p, CUmemGenericAllocationHandle* handle, CUdeviceptr* chunk_base,
                                   std::size_t* chunk_size) noexcept = 0;
};

// A provider registers once it can map memory and unregisters before it goes away (providers live until
// the process ends, so in practice never). At most kMaxExportableSources at once; false beyond that.
constexpr int kMaxExportableSources = 64;
bool register_exportable_memory(ExportableMemory* source) noexcept;
void unregister_exportable_memory(ExportableMemory* source) noexcept;

// The provider is about to cuMemRelease `handle` (after cuMemUnmap): IPC closes the fd it exported for
// it, if any, so the physical memory is freed once importers unmap it too. One relaxed load when
// nothing was ever exported.
void on_physical_memory_released(CUmemGenericAllocationHandle handle) noexcept;

}  // namespace gpushim::ipc
