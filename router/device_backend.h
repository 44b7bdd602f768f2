// Builds the backend of one device from the settings: provider backends over the CudaPeerProvider
// (capped by LimitedProvider under GPUSHIM_LIMIT), driver-backed ones (passthrough, mempool) directly
// (capped by LimitingAllocator), all wrapped by the statistics decorator. Falls back to passthrough,
// with one warning, when the chosen backend cannot be built on this device.
#pragma once

#include <cstdint>
#include <memory>

#include "allocators/allocator.h"
#include "providers/device_access.h"
#include "providers/memory_provider.h"
#include "providers/placement_policy.h"
#include "tracing/trace_recorder.h"

namespace gpushim {

struct DeviceBackend {
  std::unique_ptr<MemoryProvider> provider;        // the CUDA VMM provider, for provider backends
  const PlacedMemoryProvider* placed = nullptr;    // `provider`, when it places memory on peers (GPUSHIM_PEERS)
  DeviceAccess* access = nullptr;                  // grants peers access to the blocks; null for passthrough
  std::unique_ptr<MemoryProvider> capped_provider; // LimitedProvider over it when a limit is set
  std::unique_ptr<Allocator> backend;              // what the router calls (decorated)
  const char* name = "passthrough";
  tracing::BackendId id = tracing::BackendId::passthrough;
  bool stream_ordered = false;                     // mempool: frees are ordered by the pool itself
  bool driver_backed = true;                       // blocks are real driver allocations
  std::uint64_t limit = 0;                         // resolved GPUSHIM_LIMIT, 0 = none
};

DeviceBackend build_device_backend(int device) noexcept;

}  // namespace gpushim
