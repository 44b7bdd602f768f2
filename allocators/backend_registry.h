// Every backend by name: what GPUSHIM_BACKEND accepts, what `gpushim --help` lists, and what
// `gpushim trace replay` runs. Provider backends are pure algorithms over a MemoryProvider, so the same
// factory serves the GPU (CudaPeerProvider) and host memory (HostProvider).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "allocators/allocator.h"
#include "config/settings.h"
#include "providers/memory_provider.h"
#include "tracing/backend_id.h"

namespace gpushim {

using ProviderBackendFactory = std::unique_ptr<Allocator> (*)(MemoryProvider& provider,
                                                              const Settings& settings);

// What the router needs to know of a backend, so that it never has to ask for its name.
struct BackendTraits {
  bool driver_backed;        // every block is a real driver allocation (the driver checks its frees)
  bool stream_ordered;       // the backend's own free is ordered on the stream (the driver's pool)
  bool forwards_every_call;  // every call is the driver's own: with nothing to count, skip the router
};

struct BackendInfo {
  const char* name;                  // as GPUSHIM_BACKEND spells it
  tracing::BackendId id;
  ProviderBackendFactory factory;    // nullptr for driver-backed backends (allocators/backend_stack.cpp)
  BackendTraits traits;
  const char* summary;               // one line for --help
};

// All backends, provider-backed and driver-backed, in the order --help lists them.
const std::vector<BackendInfo>& backend_table();
const BackendInfo* find_backend(std::string_view name);
// The backend GPUSHIM_BACKEND chose (kDefaultBackend when unset); passthrough when the name is unknown
// (settings warned already).
const BackendInfo& chosen_backend(const Settings& settings);
// The safe fallback when the chosen backend cannot be built on a device.
const BackendInfo& passthrough_backend();

// Backend used when GPUSHIM_BACKEND is unset. Chosen by measurement: see README.md "Choosing a backend".
inline constexpr const char* kDefaultBackend = "tiered";

}  // namespace gpushim
