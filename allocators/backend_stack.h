// The backend of one device, assembled from the settings and the registry (allocators/backend_registry.h):
// provider backends over the CUDA provider (capped by LimitedProvider under GPUSHIM_LIMIT), driver-backed
// ones directly (capped by LimitingAllocator), all wrapped by the statistics decorator. Falls back to
// passthrough, with one warning, when the chosen backend cannot be built on this device. The router
// reads the stack's properties; it never needs the backend's name to decide anything.
#pragma once

#include <cstdint>
#include <memory>

#include "allocators/allocator.h"
#include "allocators/spilling_allocator.h"
#include "providers/device_access.h"
#include "providers/mapping_statistics.h"
#include "providers/memory_provider.h"
#include "providers/placement_policy.h"
#include "tracing/backend_id.h"

namespace gpushim {

// Read on every request: plain values, fixed when the stack is assembled.
struct BackendProperties {
  const char* name = "passthrough";                // for reports and logs only
  tracing::BackendId id = tracing::BackendId::passthrough;
  bool stream_ordered = false;                     // mempool: frees are ordered by the pool itself
  bool driver_backed = true;                       // blocks are real driver allocations
  bool fenced = false;                             // Allocator::needs_free_fence(), asked once
  std::uint64_t limit = 0;                         // resolved GPUSHIM_LIMIT, 0 = none
  const PlacedMemoryProvider* placed = nullptr;    // the provider, when it places memory on peers (GPUSHIM_PEERS)
  DeviceAccess* access = nullptr;                  // grants peers access to the blocks; null for passthrough
  const SpillingAllocator* spill = nullptr;        // inside `backend`, when it spills to host (GPUSHIM_SPILL)
  std::uint64_t spill_limit = 0;                   // resolved GPUSHIM_SPILL_LIMIT, when spilling
  const MappingStatisticsProvider* mappings = nullptr; // GPUSHIM_STATS: the device provider's maps
};

struct BackendStack {
  std::unique_ptr<MemoryProvider> provider;        // the CUDA VMM provider, for provider backends
  std::unique_ptr<MemoryProvider> capped_provider; // LimitedProvider over it when a limit is set
  std::unique_ptr<MappingStatisticsProvider> counted_provider; // over those, under GPUSHIM_STATS
  // GPUSHIM_SPILL=host (docs/host-spill.md): host memory mapped for the device, capped at spill_limit.
  std::unique_ptr<MemoryProvider> spill_provider;
  std::unique_ptr<MemoryProvider> capped_spill_provider;
  std::unique_ptr<Allocator> backend;              // what the router calls (decorated); null without host memory
  BackendProperties properties;
};

BackendStack backend_for_device(int device) noexcept;

}  // namespace gpushim
