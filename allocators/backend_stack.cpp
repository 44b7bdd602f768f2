#include "allocators/backend_stack.h"

#include "allocators/backend_registry.h"
#include "allocators/mempool_allocator.h"
#include "allocators/passthrough_allocator.h"
#include "annotations/memory_checker.h"
#include "config/settings.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"
#include "providers/cuda_vmm_provider.h"

#include "allocators/limiting_allocator.h"
#include "allocators/statistics_allocator.h"
#include "providers/cuda_peer_provider.h"
#include "providers/limited_provider.h"
#include "providers/placement_policy.h"

namespace gpushim {
namespace {

std::unique_ptr<Allocator> with_statistics(std::unique_ptr<Allocator> backend) {
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
  BackendStack result;
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
    // GPUSHIM_PEERS set: physical memory is placed by GPUSHIM_PLACEMENT and mapped for every listed
    // device (docs/peers.md); otherwise the one-device provider.
    std::unique_ptr<MemoryProvider> provider;
    const PlacedMemoryProvider* placed = nullptr;
    bool provider_ok = false;
    if (!s.peers.empty()) {
      Placement placement = Placement::local;
      parse_placement(s.placement, &placement);
      auto peer = std::make_unique<CudaPeerProvider>(device, s.peers, placement, std::vector<std::size_t>{},
                                                     info->id);
      provider_ok = peer->ok();
      placed = peer.get();
      provider = std::move(peer);
    } else {
      auto local = std::make_unique<CudaVmmProvider>(device, info->id);
      provider_ok = local->ok();
      provider = std::move(local);
    }
    if (!provider_ok) {
      log(LogLevel::warn, "device %d: backend %s needs virtual memory management, using passthrough", device,
          info->name);
      return passthrough(device, limit);
    }
    BackendStack result;
    MemoryProvider* source = provider.get();
    if (limit) {
      result.capped_provider = std::make_unique<LimitedProvider>(*provider, static_cast<std::size_t>(limit));
      source = result.capped_provider.get();
    }
    std::unique_ptr<Allocator> backend = info->factory(*source, s);
    if (!backend) {
      log(LogLevel::warn, "device %d: backend %s could not start, using passthrough", device, info->name);
      return passthrough(device, limit);
    }
    result.provider = std::move(provider);
    result.properties.placed = placed;
    result.backend = with_statistics(std::move(backend));
    return finished(std::move(result), *info, limit);
  } catch (...) {
    BackendStack empty;  // no host memory: the router sees no backend and passes calls to the driver
    return empty;
  }
}

}  // namespace gpushim
