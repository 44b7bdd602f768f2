#include "allocators/backend_registry.h"

#include "allocators/buddy_allocator.h"
#include "allocators/slab_allocator.h"
#include "allocators/tiered_allocator.h"
#include "allocators/vmm_arena.h"

namespace gpushim {

const std::vector<BackendInfo>& backend_table() {
  static const std::vector<BackendInfo> table = {
      {"tiered", tracing::BackendId::tiered, &make_tiered_allocator,
       "small blocks to the slab, the rest to the vmm arena (default)"},
      {"vmm", tracing::BackendId::vmm, &make_vmm_arena,
       "growable arena: one reserved range per device, mapped in 2 MiB steps, best fit with coalescing"},
      {"buddy", tracing::BackendId::buddy, &make_buddy_allocator,
       "power-of-two buddy system over large regions"},
      {"slab", tracing::BackendId::slab, &make_slab_allocator,
       "size classes carved from 2 MiB slabs; larger sizes get whole slab runs"},
      {"mempool", tracing::BackendId::mempool, nullptr,
       "the driver's stream-ordered pool (cuMemPoolCreate), one per device"},
      {"passthrough", tracing::BackendId::passthrough, nullptr,
       "the real cuMemAlloc/cuMemFree, for comparison and as the safe fallback"},
  };
  return table;
}

const BackendInfo* find_backend(std::string_view name) {
  for (const BackendInfo& info : backend_table())
    if (name == info.name) return &info;
  return nullptr;
}

}  // namespace gpushim
