#include "allocators/backend_registry.h"

#include "allocators/arena_shards.h"
#include "allocators/buddy_allocator.h"
#include "allocators/slab_allocator.h"
#include "allocators/tiered_allocator.h"
#include "allocators/vmm_arena.h"

namespace gpushim {

const std::vector<BackendInfo>& backend_table() {
  static const std::vector<BackendInfo> table = {
      {"tiered", tracing::BackendId::tiered, &make_tiered_allocator, {false, false, false},
       "small blocks to the slab, the rest to the vmm arena (default)"},
      {"vmm", tracing::BackendId::vmm, &make_vmm_arena, {false, false, false},
       "growable arena: one reserved range per device, mapped in 2 MiB steps, best fit with coalescing"},
      {"buddy", tracing::BackendId::buddy, &make_buddy_allocator, {false, false, false},
       "power-of-two buddy system over large regions"},
      {"slab", tracing::BackendId::slab, &make_slab_allocator, {false, false, false},
       "size classes carved from 2 MiB slabs; larger sizes get whole slab runs"},
      {"mempool", tracing::BackendId::mempool, nullptr, {true, true, false},
       "the driver's stream-ordered pool (cuMemPoolCreate), one per device"},
      // Last: passthrough_backend() returns it.
      {"passthrough", tracing::BackendId::passthrough, nullptr, {true, false, true},
       "the real cuMemAlloc/cuMemFree, for comparison and as the safe fallback"},
  };
  return table;
}

const BackendInfo* find_backend(std::string_view name) {
  for (const BackendInfo& info : backend_table())
    if (name == info.name) return &info;
  return nullptr;
}

const BackendInfo& passthrough_backend() {
  return backend_table().back();
}

const BackendInfo& chosen_backend(const Settings& settings) {
  const BackendInfo* info = find_backend(settings.backend.empty() ? kDefaultBackend : settings.backend);
  return info ? *info : passthrough_backend();
}

}  // namespace gpushim
