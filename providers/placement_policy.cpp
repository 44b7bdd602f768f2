#include "providers/placement_policy.h"

#include <algorithm>
#include <cstdio>

#include "diagnostics/log.h"

namespace gpushim {
namespace {

std::size_t room_of(const std::vector<DeviceRoom>& rooms, int device) {
  for (const DeviceRoom& r : rooms)
    if (r.device == device) return r.granules;
  return 0;
}

// Appends `granules` granules at `first` on `device`, merging with the previous segment when it is on the
// same device and ends right there.
void append(std::vector<PlacementSegment>* out, int device, std::size_t first, std::size_t granules) {
  if (granules == 0) return;
  if (!out->empty() && out->back().device == device && out->back().first + out->back().granules == first) {
    out->back().granules += granules;
    return;
  }
  out->push_back(PlacementSegment{device, first, granules});
}

bool plan_local(const PlacementRequest& request, const std::vector<DeviceRoom>& rooms,
                std::vector<PlacementSegment>* out) {
  if (room_of(rooms, request.local_device) < request.granules) return false;
  append(out, request.local_device, 0, request.granules);
  return true;
}

bool plan_interleave(const PlacementRequest& request, const std::vector<DeviceRoom>& rooms,
                     std::vector<PlacementSegment>* out) {
  const std::size_t n = rooms.size();
  if (n == 0) return false;
  std::vector<std::size_t> left(n);
  for (std::size_t i = 0; i < n; ++i) left[i] = rooms[i].granules;
  for (std::size_t g = 0; g < request.granules; ++g) {
    const std::size_t turn = (request.first_granule + g) % n;
    std::size_t chosen = n;
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t candidate = (turn + k) % n;
      if (left[candidate] > 0) {
        chosen = candidate;
        break;
      }
    }
    if (chosen == n) return false;  // every participant is full
    if (left[chosen] != kUnknownRoom) --left[chosen];
    append(out, rooms[chosen].device, g, 1);
  }
  return true;
}

bool plan_spill(const PlacementRequest& request, const std::vector<DeviceRoom>& rooms,
                std::vector<PlacementSegment>* out) {
  std::size_t remaining = request.granules;
  std::size_t placed = 0;
  const std::size_t on_local = std::min(room_of(rooms, request.local_device), remaining);
  append(out, request.local_device, 0, on_local);
  placed += on_local;
  remaining -= on_local;
  if (remaining == 0) return true;
  std::vector<DeviceRoom> peers;
  for (const DeviceRoom& r : rooms)
    if (r.device != request.local_device && r.granules > 0) peers.push_back(r);
  // Most room first (unknown counts as most); ties keep the participants' order.
  std::stable_sort(peers.begin(), peers.end(),
                   [](const DeviceRoom& a, const DeviceRoom& b) { return a.granules > b.granules; });
  for (const DeviceRoom& peer : peers) {
    const std::size_t take = std::min(peer.granules, remaining);
    append(out, peer.device, placed, take);
    placed += take;
    remaining -= take;
    if (remaining == 0) return true;
  }
  return false;
}

}  // namespace

bool parse_placement(const std::string& text, Placement* out) noexcept {
  if (text.empty() || text == "local") {
    *out = Placement::local;
  } else if (text == "interleave") {
    *out = Placement::interleave;
  } else if (text == "spill") {
    *out = Placement::spill;
  } else {
    return false;
  }
  return true;
}

const char* placement_name(Placement placement) noexcept {
  switch (placement) {
    case Placement::local: return "local";
    case Placement::interleave: return "interleave";
    case Placement::spill: return "spill";
  }
  return "local";
}

std::vector<int> peer_devices_from_setting(const std::string& peers, int device_count, int local_device) {
  std::vector<bool> chosen(static_cast<std::size_t>(std::max(device_count, 0)), false);
  if (peers == "all") {
    std::fill(chosen.begin(), chosen.end(), true);
  } else {
    long value = -1;
    for (std::size_t i = 0; i <= peers.size(); ++i) {
      const char c = i < peers.size() ? peers[i] : ',';
      if (c >= '0' && c <= '9') {
        value = (value < 0 ? 0 : value) * 10 + (c - '0');
        if (value > 1 << 20) value = 1 << 20;  // an absurd ordinal: dropped below, no overflow
      } else if (c == ',') {
        if (value >= 0 && value < device_count) chosen[static_cast<std::size_t>(value)] = true;
        value = -1;
      } else {
        value = -1;  // settings() rejected such a list already; ignore the stray character
      }
    }
  }
  if (local_device >= 0 && local_device < device_count) chosen[static_cast<std::size_t>(local_device)] = true;
  std::vector<int> devices;
  for (int d = 0; d < device_count; ++d)
    if (chosen[static_cast<std::size_t>(d)]) devices.push_back(d);
  return devices;
}

bool plan_placement(const PlacementRequest& request, const std::vector<DeviceRoom>& rooms,
                    std::vector<PlacementSegment>* out) {
  out->clear();
  if (request.granules == 0) return false;
  bool ok = false;
  switch (request.policy) {
    case Placement::local: ok = plan_local(request, rooms, out); break;
    case Placement::interleave: ok = plan_interleave(request, rooms, out); break;
    case Placement::spill: ok = plan_spill(request, rooms, out); break;
  }
  if (!ok) out->clear();
  return ok;
}

PerDeviceBytes::PerDeviceBytes(int device_count)
    : count_(std::max(device_count, 0)),
      bytes_(new std::atomic<std::size_t>[static_cast<std::size_t>(std::max(device_count, 1))]) {
  for (int d = 0; d < std::max(count_, 1); ++d) bytes_[d].store(0, std::memory_order_relaxed);
}

void PerDeviceBytes::add(int device, std::size_t bytes) noexcept {
  if (device >= 0 && device < count_) bytes_[device].fetch_add(bytes, std::memory_order_relaxed);
}

void PerDeviceBytes::subtract(int device, std::size_t bytes) noexcept {
  if (device >= 0 && device < count_) bytes_[device].fetch_sub(bytes, std::memory_order_relaxed);
}

std::size_t PerDeviceBytes::on(int device) const noexcept {
  if (device < 0 || device >= count_) return 0;
  return bytes_[device].load(std::memory_order_relaxed);
}

std::size_t PerDeviceBytes::total() const noexcept {
  std::size_t sum = 0;
  for (int d = 0; d < count_; ++d) sum += bytes_[d].load(std::memory_order_relaxed);
  return sum;
}

const char* describe_placement(const PlacedMemoryProvider& provider, char* buf, std::size_t size) noexcept {
  if (size == 0) return buf;
  buf[0] = '\0';
  std::size_t used = 0;
  bool any = false;
  for (int device : provider.participants()) {
    const std::size_t bytes = provider.bytes_mapped_on(device);
    if (bytes == 0) continue;
    char amount[32];
    const int n = std::snprintf(buf + used, size - used, "%sdevice %d: %s", any ? ", " : "", device,
                                format_bytes(bytes, amount, sizeof amount));
    if (n < 0) break;
    any = true;
    used += static_cast<std::size_t>(n);
    if (used >= size) {
      used = size - 1;
      break;
    }
  }
  if (!any) std::snprintf(buf, size, "nothing mapped");
  return buf;
}

}  // namespace gpushim
