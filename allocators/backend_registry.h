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
#include "tracing/trace_recorder.h"

namespace gpushim {

using ProviderBackendFactory = std::unique_ptr<Allocator> (*)(MemoryProvider& provider,
                                                              const Settings& settings);

struct BackendInfo {
  const char* name;                  // as GPUSHIM_BACKEND spells it
  tracing::BackendId id;
  ProviderBackendFactory factory;    // nullptr for driver-backed backends (passthrough, mempool)
  const char* summary;               // one line for --help
};

// All backends, provider-backed and driver-backed, in the order --help lists them.
const std::vector<BackendInfo>& backend_table();
const BackendInfo* find_backend(std::string_view name);

// Backend used when GPUSHIM_BACKEND is unset. Chosen by measurement: see README.md "Choosing a backend".
inline constexpr const char* kDefaultBackend = "tiered";

}  // namespace gpushim
