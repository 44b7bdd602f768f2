#include "providers/simulated_devices_provider.h"

#include <algorithm>

namespace gpushim {
namespace {

std::vector<int> participants_of(const SimulatedDevicesOptions& options) {
  const int count = static_cast<int>(options.capacities.size());
  std::vector<int> devices;
  for (int d = 0; d < count; ++d) {
    const bool listed = options.participants.empty() ||
                        std::find(options.participants.begin(), options.participants.end(), d) !=
                            options.participants.end();
    if (listed || d == options.local_device) devices.push_back(d);
  }
  return devices;
}

}  // namespace

SimulatedDevicesProvider::SimulatedDevicesProvider(const SimulatedDevicesOptions& options)
    : host_(options.granularity),
      capacities_(options.capacities),
      local_device_(options.local_device),
      placement_(options.placement),
      rooms_known_(options.rooms_known),
      participants_(participants_of(options)),
      per_device_(static_cast<int>(options.capacities.size())) {}

bool SimulatedDevicesProvider::map(void* addr, std::size_t bytes) noexcept {
  const std::size_t g = host_.granularity();
  const auto base = reinterpret_cast<std::uintptr_t>(addr);
  std::lock_guard<std::mutex> lock(mutex_);
  if (bytes == 0 || bytes % g != 0 || base % g != 0) {
    ++misuse_;
    return false;
  }
  PlacementRequest request;
  request.policy = placement_;
  request.local_device = local_device_;
  request.first_granule = base / g;
  request.granules = bytes / g;
  std::vector<DeviceRoom> rooms;
  try {
    for (int d : participants_) {
      const std::size_t used = per_device_.on(d);
      const std::size_t cap = capacities_[static_cast<std::size_t>(d)];
      rooms.push_back(DeviceRoom{d, rooms_known_ ? (cap > used ? (cap - used) / g : 0) : kUnknownRoom});
    }
  } catch (...) {
    return false;
  }
  // Backing a segment is this provider's cuMemCreate + cuMemMap: the capacity check is the device
  // running out of memory, the host mapping the map.
  auto back = [&](const PlacementSegment& s) {
    const std::size_t seg_bytes = s.granules * g;
    const std::size_t cap = capacities_[static_cast<std::size_t>(s.device)];
    const std::size_t used = per_device_.on(s.device);
    if (seg_bytes > cap || used > cap - seg_bytes) return BackingResult::out_of_memory;
    if (!host_.map(reinterpret_cast<void*>(base + s.first * g), seg_bytes)) return BackingResult::failed;
    per_device_.add(s.device, seg_bytes);
    ++segments_backed_;
    return BackingResult::ok;
  };
  auto undo = [&](const PlacementSegment& s) {
    host_.unmap(reinterpret_cast<void*>(base + s.first * g), s.granules * g);
    per_device_.subtract(s.device, s.granules * g);
  };
  std::vector<PlacementSegment> backed;
  if (!back_with_placement(request, std::move(rooms), back, undo, &backed)) return false;
  try {
    mappings_.emplace(base, Mapping{bytes, std::move(backed)});
  } catch (...) {
    for (auto it = backed.rbegin(); it != backed.rend(); ++it) undo(*it);
    return false;
  }
  return true;
}

void SimulatedDevicesProvider::unmap(void* addr, std::size_t bytes) noexcept {
  const std::size_t g = host_.granularity();
  const auto base = reinterpret_cast<std::uintptr_t>(addr);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = mappings_.find(base);
  if (it == mappings_.end() || it->second.bytes != bytes) {
    ++misuse_;  // the driver cannot unmap part of a mapping, nor one it never made
    return;
  }
  for (const PlacementSegment& s : it->second.segments) {
    host_.unmap(reinterpret_cast<void*>(base + s.first * g), s.granules * g);
    per_device_.subtract(s.device, s.granules * g);
  }
  mappings_.erase(it);
}

int SimulatedDevicesProvider::backing_device(const void* address) const noexcept {
  const std::size_t g = host_.granularity();
  const auto a = reinterpret_cast<std::uintptr_t>(address);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = mappings_.upper_bound(a);
  if (it == mappings_.begin()) return -1;
  --it;
  if (a >= it->first + it->second.bytes) return -1;
  const std::size_t granule = (a - it->first) / g;
  for (const PlacementSegment& s : it->second.segments)
    if (granule >= s.first && granule < s.first + s.granules) return s.device;
  return -1;
}

}  // namespace gpushim
