#include "allocators/backend_stack.h"

#include "allocators/backend_registry.h"
#include "allocators/block_alignment.h"
#include "allocators/mempool_allocator.h"
#include "allocators/passthrough_allocator.h"
#include "annotations/memory_checker.h"
#include "config/settings.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"

#include "allocators/limiting_allocator.h"
#include "allocators/spilling_allocator.h"
#include "allocators/statistics_allocator.h"
#include "allocators/thread_cache_allocator.h"
#include "allocators/vmm_arena.h"
#include "providers/cuda_host_memory_provider.h"
#include "providers/cuda_peer_provider.h"
#include "providers/host_memory_capacity.h"
#include "providers/limited_provider.h"
#include "providers/placement_policy.h"

namespace gpushim {
namespace {

// Only under GPUSHIM_STATS: the decorator keeps the exact peak of bytes in use across threads, which
// only the exit statistics print; without it the backend's own counts answer (its peak includes blocks
// in thread caches and rounding: an upper bound). Its per-call accounting was ~40 Ir per pair.
std::unique_ptr<Allocator> with_statistics(std::unique_ptr<Allocator> backend) {
  if (!settings().stats) return backend;
  return std::make_unique<StatisticsAllocator>(std::move(backend));
}

std::unique_ptr<Allocator> with_limit(std::unique_ptr<Allocator> backend, std::uint64_t limit) {
  if (limit == 0) return backend;
  return std::make_unique<LimitingAllocator>(std::move(backend), static_cast<std::size_t>(limit));
}

std::uint64_t resolve_limit(int device) {
  const Settings& s = settings();
  if (!s.limit.set()) return 0;
  std::size_t total = 0;
  CUdevice dev = 0;
  const RealDriver& driver = real_driver();
  if (driver.cuDeviceGet(&dev, device) != CUDA_SUCCESS || driver.cuDeviceTotalMem(&total, dev) != CUDA_SUCCESS)
    total = 0;
  return s.limit.resolve(total);
}

// GPUSHIM_LIMIT resolved for every device, by ordinal: the caps of the CUDA provider under
// GPUSHIM_PEERS, where each device's backend may place memory on all of them. Empty without a limit.
std::vector<std::size_t> per_device_limits() {
  std::vector<std::size_t> caps;
  int count = 0;
  if (!settings().limit.set() || real_driver().cuDeviceGetCount(&count) != CUDA_SUCCESS) return caps;
  for (int d = 0; d < count; ++d) caps.push_back(static_cast<std::size_t>(resolve_limit(d)));
  return caps;
}

// The device's texture alignment, which every block must meet (allocators/block_alignment.h).
std::size_t device_texture_alignment(int device) noexcept {
  const RealDriver& driver = real_driver();
  CUdevice dev = 0;
  int attribute = 0;
  if (!driver.cuDeviceGetAttribute || driver.cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
      driver.cuDeviceGetAttribute(&attribute, CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT, dev) != CUDA_SUCCESS)
    attribute = 0;
  return texture_alignment(attribute);
}

// The router's view of a finished stack: read once here, so a request reads plain values, never a
// virtual call or a name.
BackendStack finished(BackendStack stack, const BackendInfo& info, std::uint64_t limit) {
  stack.properties.name = info.name;
  stack.properties.id = info.id;
  stack.properties.driver_backed = info.traits.driver_backed;
  stack.properties.stream_ordered = info.traits.stream_ordered;
  stack.properties.fenced = stack.backend->needs_free_fence();
  stack.properties.limit = limit;
  return stack;
}

// GPUSHIM_SPILL=host on a backend that takes its memory from the driver: nothing to put host memory
// under, so allocations fail at the device as before. Said once.
void say_backend_does_not_spill(const char* backend) {
  if (!settings().spill_host) return;
  static bool reported = false;
  log_once(&reported, LogLevel::warn,
           "GPUSHIM_SPILL=host: backend %s does not spill (only vmm, buddy, slab and tiered do)", backend);
}

// GPUSHIM_SPILL=host: `backend` first, host memory for what it cannot serve (allocators/
// spilling_allocator.h, docs/host-spill.md). The host memory is mapped for the same devices as the
// device memory. Where the driver cannot map host memory, `backend` is returned as it was.
std::unique_ptr<Allocator> with_host_spill(std::unique_ptr<Allocator> backend, int device,
                                           const PlacedMemoryProvider* placed, tracing::BackendId id,
                                           const Settings& s, BackendStack* result) {
  const std::vector<int> access = placed ? placed->participants() : std::vector<int>{device};
  auto host = std::make_unique<CudaHostMemoryProvider>(device, access, id);
  if (!host->ok()) return backend;  // it said why
  const std::uint64_t cap = s.spill_limit.resolve(host_memory_for_spill());
  if (cap < host->granularity()) {
    log(LogLevel::warn, "GPUSHIM_SPILL=host: device %d: GPUSHIM_SPILL_LIMIT comes to less than %zu bytes; "
        "it does not spill", device, host->granularity());
    return backend;
  }
  auto capped = std::make_unique<LimitedProvider>(*host, static_cast<std::size_t>(cap));
  auto spilling = std::make_unique<SpillingAllocator>(std::move(backend),
                                                      std::make_unique<VmmArena>(*capped, VmmArenaOptions::from(s)));
  char amount[32];
  log(LogLevel::info, "device %d: spills to host memory (NUMA node %d), up to %s", device, host->host_numa_node(),
      format_bytes(cap, amount, sizeof amount));
  result->properties.spill = spilling.get();
  result->properties.spill_limit = cap;
  result->spill_provider = std::move(host);
  result->capped_spill_provider = std::move(capped);
  return spilling;
}

// Backends whose blocks come from the driver itself; the registry lists them without a provider factory.
std::unique_ptr<Allocator> make_passthrough(int device, const Settings&) {
  return std::make_unique<PassthroughAllocator>(device);
}
std::unique_ptr<Allocator> make_mempool(int device, const Settings& s) {
  auto pool = std::make_unique<MempoolAllocator>(device, s.mempool_release_threshold);
  if (!pool->ok()) return nullptr;
  return pool;
}
struct DriverBackendFactory {
  tracing::BackendId id;
  std::unique_ptr<Allocator> (*make)(int device, const Settings& settings);
};
constexpr DriverBackendFactory kDriverBackendFactories[] = {
    {tracing::BackendId::passthrough, &make_passthrough},
    {tracing::BackendId::mempool, &make_mempool},
};

BackendStack passthrough(int device, std::uint64_t limit) {
  say_backend_does_not_spill("passthrough");
  BackendStack result;
  result.backend = with_statistics(with_limit(make_passthrough(device, settings()), limit));
  return finished(std::move(result), passthrough_backend(), limit);
}

BackendStack driver_backed(int device, const BackendInfo& info, std::uint64_t limit) {
  std::unique_ptr<Allocator> backend;
  for (const DriverBackendFactory& factory : kDriverBackendFactories)
    if (factory.id == info.id) backend = factory.make(device, settings());
  if (!backend) {
    log(LogLevel::warn, "device %d: backend %s unavailable, using passthrough", device, info.name);
    return passthrough(device, limit);
  }
  say_backend_does_not_spill(info.name);
  BackendStack result;
  result.properties.access = dynamic_cast<DeviceAccess*>(backend.get());  // mempool's pools; passthrough: none
  result.backend = with_statistics(with_limit(std::move(backend), limit));
  return finished(std::move(result), info, limit);
}

}  // namespace

// compute-sanitizer checks accesses against allocations it knows. It accepts an NVTX pool over a
// cuMemAlloc block but refuses one over a cuMemMap range (measured on the H100, CUDA 13.0:
// tests/annotations_nvtx_heap_probe.cpp, "cuMemMap heap REFUSED"), so inside gpushim's VMM-backed
// pools it cannot see a block's bounds. Under the sanitizer, every block is therefore its own
// cuMemAlloc allocation (passthrough), whose bounds it checks exactly.
BackendStack backend_for_device(int device) noexcept {
  try {
    const Settings& s = settings();
    const std::uint64_t limit = resolve_limit(device);
    const BackendInfo* info = &chosen_backend(s);
    if (info->traits.forwards_every_call) return passthrough(device, limit);
    if (memory_checker_attached()) {
      static bool reported = false;
      log_once(&reported, LogLevel::warn,
               "compute-sanitizer detected: backend %s replaced by passthrough so that every block is an "
               "allocation it checks (it cannot see blocks inside VMM-mapped pools)", info->name);
      return passthrough(device, limit);
    }

    if (!info->factory) return driver_backed(device, *info, limit);
    const std::size_t alignment = device_texture_alignment(device);
    if (!provider_blocks_meet(alignment)) {
      log(LogLevel::warn, "device %d: texture alignment %zu B exceeds backend %s's %zu B, using passthrough", device,
          alignment, info->name, kMinAlignment);
      return passthrough(device, limit);
    }
    // One CUDA provider: with GPUSHIM_PEERS set, physical memory is placed by GPUSHIM_PLACEMENT and
    // mapped for every listed device, and GPUSHIM_LIMIT caps what the process places on each device
    // (docs/peers.md); otherwise it serves this device alone, capped below by LimitedProvider.
    const bool peers = !s.peers.empty();
    Placement placement = Placement::local;
    if (peers) parse_placement(s.placement, &placement);
    auto cuda = std::make_unique<CudaPeerProvider>(device, s.peers, placement,
                                                   peers ? per_device_limits() : std::vector<std::size_t>{}, info->id);
    const bool provider_ok = cuda->ok();
    const PlacedMemoryProvider* placed = peers ? cuda.get() : nullptr;
    DeviceAccess* access = cuda.get();
    std::unique_ptr<MemoryProvider> provider = std::move(cuda);
    if (!provider_ok) {
      log(LogLevel::warn, "device %d: backend %s needs virtual memory management, using passthrough", device,
          info->name);
      return passthrough(device, limit);
    }
    BackendStack result;
    MemoryProvider* source = provider.get();
    if (limit && !peers) {
      result.capped_provider = std::make_unique<LimitedProvider>(*provider, static_cast<std::size_t>(limit));
      source = result.capped_provider.get();
    }
    if (s.stats) {
      result.counted_provider = std::make_unique<MappingStatisticsProvider>(*source);
      source = result.counted_provider.get();
      result.properties.mappings = result.counted_provider.get();
    }
    std::unique_ptr<Allocator> backend = info->factory(*source, s);
    if (!backend) {
      log(LogLevel::warn, "device %d: backend %s could not start, using passthrough", device, info->name);
      return passthrough(device, limit);
    }
    // Per-thread caches in front of the shared backend (allocators/thread_cache_allocator.h); inside the
    // spill, so host blocks never sit in a device cache. Large slots park while the arena's lock is
    // contended (GPUSHIM_LARGE_SLOTS=auto), always (1) or never (0).
    backend = std::make_unique<ThreadCacheAllocator>(std::move(backend), s.large_slots);
    if (s.spill_host) backend = with_host_spill(std::move(backend), device, placed, info->id, s, &result);
    result.provider = std::move(provider);
    result.properties.placed = placed;
    result.properties.access = access;
    result.backend = with_statistics(std::move(backend));
    return finished(std::move(result), *info, limit);
  } catch (...) {
    BackendStack empty;  // no host memory: the router sees no backend and passes calls to the driver
    return empty;
  }
}

}  // namespace gpushim
