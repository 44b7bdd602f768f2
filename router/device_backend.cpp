#include "router/device_backend.h"

#include <link.h>

#include <cstring>
#include <string>
#include <vector>

#include "allocators/backend_registry.h"
#include "allocators/mempool_allocator.h"
#include "allocators/passthrough_allocator.h"
#include "config/settings.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"

#include "allocators/limiting_allocator.h"
#include "allocators/statistics_allocator.h"
#include "providers/cuda_peer_provider.h"
#include "providers/limited_provider.h"
#include "providers/placement_policy.h"
#include "router/block_alignment.h"

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

// GPUSHIM_LIMIT resolved for every device, by ordinal: the caps of the CUDA provider under
// GPUSHIM_PEERS, where each device's backend may place memory on all of them. Empty without a limit.
std::vector<std::size_t> per_device_limits() {
  std::vector<std::size_t> caps;
  int count = 0;
  if (!settings().limit.set() || real_driver().cuDeviceGetCount(&count) != CUDA_SUCCESS) return caps;
  for (int d = 0; d < count; ++d) caps.push_back(static_cast<std::size_t>(resolve_limit(d)));
  return caps;
}

// The device's texture alignment, which every block must meet (router/block_alignment.h).
std::size_t device_texture_alignment(int device) noexcept {
  const RealDriver& driver = real_driver();
  CUdevice dev = 0;
  int attribute = 0;
  if (!driver.cuDeviceGetAttribute || driver.cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
      driver.cuDeviceGetAttribute(&attribute, CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT, dev) != CUDA_SUCCESS)
    attribute = 0;
  return texture_alignment(attribute);
}

DeviceBackend passthrough(int device, std::uint64_t limit) {
  DeviceBackend result;
  result.limit = limit;
  result.backend = with_statistics(with_limit(std::make_unique<PassthroughAllocator>(device), limit));
  return result;
}

}  // namespace

// compute-sanitizer checks accesses against allocations it knows. It accepts an NVTX pool over a
// cuMemAlloc block but refuses one over a cuMemMap range (measured on the H100, CUDA 13.0:
// annotations/testing/nvtx_heap_probe.cpp, "cuMemMap heap REFUSED"), so inside gpushim's VMM-backed
// pools it cannot see a block's bounds. Under the sanitizer, every block is therefore its own
// cuMemAlloc allocation (passthrough), whose bounds it checks exactly. Detected by its injection
// library being loaded in the process.
bool memory_checker_attached() noexcept {
  return dl_iterate_phdr(
             [](dl_phdr_info* info, std::size_t, void*) -> int {
               return info->dlpi_name && std::strstr(info->dlpi_name, "libsanitizer-collection") ? 1 : 0;
             },
             nullptr) != 0;
}

DeviceBackend build_device_backend(int device) noexcept {
  try {
    const Settings& s = settings();
    const std::uint64_t limit = resolve_limit(device);
    std::string name = s.backend.empty() ? kDefaultBackend : s.backend;
    const BackendInfo* info = find_backend(name);
    if (!info || name == "passthrough") return passthrough(device, limit);  // settings warned already
    if (memory_checker_attached()) {
      static bool reported = false;
      log_once(&reported, LogLevel::warn,
               "compute-sanitizer detected: backend %s replaced by passthrough so that every block is an "
               "allocation it checks (it cannot see blocks inside VMM-mapped pools)", info->name);
      return passthrough(device, limit);
    }

    if (name == "mempool") {
      auto pool = std::make_unique<MempoolAllocator>(device, s.mempool_release_threshold);
      if (!pool->ok()) {
        log(LogLevel::warn, "device %d: backend mempool unavailable, using passthrough", device);
        return passthrough(device, limit);
      }
      DeviceBackend result;
      result.access = pool.get();
      result.backend = with_statistics(with_limit(std::move(pool), limit));
      result.name = info->name;
      result.id = info->id;
      result.stream_ordered = true;
      result.limit = limit;
      return result;
    }

    if (!info->factory) return passthrough(device, limit);
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
    DeviceBackend result;
    result.limit = limit;
    MemoryProvider* source = provider.get();
    if (limit && !peers) {
      result.capped_provider = std::make_unique<LimitedProvider>(*provider, static_cast<std::size_t>(limit));
      source = result.capped_provider.get();
    }
    std::unique_ptr<Allocator> backend = info->factory(*source, s);
    if (!backend) {
      log(LogLevel::warn, "device %d: backend %s could not start, using passthrough", device, info->name);
      return passthrough(device, limit);
    }
    result.provider = std::move(provider);
    result.placed = placed;
    result.access = access;
    result.backend = with_statistics(std::move(backend));
    result.name = info->name;
    result.id = info->id;
    result.driver_backed = false;
    return result;
  } catch (...) {
    DeviceBackend empty;  // no host memory: the router sees no backend and passes calls to the driver
    return empty;
  }
}

}  // namespace gpushim
