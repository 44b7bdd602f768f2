// Which device's physical memory backs each granule of a map() request when one arena's memory is
// shared by several GPUs (GPUSHIM_PEERS, GPUSHIM_PLACEMENT). Pure arithmetic, no CUDA: the CUDA peer
// provider and the simulated-devices provider (CPU tests) run exactly this code.
//
// The policies:
// - local:      every granule on the allocating device; the request fails if that device is full.
// - interleave: granule i of the reservation goes to participant (i mod n), so a buffer larger than one
//               GPU is striped over all of them. Striping by the granule's index in the reservation
//               (not in the request) keeps the stripe the same whichever grow step mapped it. A full
//               device is skipped: its turn goes to the next participant with room.
// - spill:      the allocating device first; what does not fit goes to the peers, the one with the most
//               room first.
//
// On the GPU the room on a device is usually not known in advance (other processes use it too, and
// asking cuMemGetInfo needs a context on every peer). So a room may be `kUnknownRoom`, and
// back_with_placement() learns it: when backing a segment runs out of memory on a device, it tries half
// of it there, and so on down to one granule; when not even one granule fits, the device is full for
// this request and the rest of the request is planned again without it. What was backed stays.
#pragma once

#include <atomic>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "providers/memory_provider.h"

namespace gpushim {

enum class Placement { local, interleave, spill };

// "" and "local" -> local, "interleave", "spill". False for anything else (settings already rejected
// it, so callers keep local).
bool parse_placement(const std::string& text, Placement* out) noexcept;
const char* placement_name(Placement placement) noexcept;

// The devices GPUSHIM_PEERS names ("all" or "0,1,3"), among `device_count` devices, ascending, without
// duplicates; ordinals >= device_count are dropped. The local device is always included (memory must be
// reachable by the device that allocated it). Empty setting -> just the local device.
std::vector<int> peer_devices_from_setting(const std::string& peers, int device_count, int local_device);

inline constexpr std::size_t kUnknownRoom = std::numeric_limits<std::size_t>::max();

struct DeviceRoom {
  int device = 0;
  std::size_t granules = kUnknownRoom;  // free granules on this device, or kUnknownRoom
};

struct PlacementRequest {
  Placement policy = Placement::local;
  int local_device = 0;
  std::size_t first_granule = 0;  // index, in the reservation, of the first granule asked for
  std::size_t granules = 0;       // how many
};

struct PlacementSegment {
  int device = 0;
  std::size_t first = 0;     // granule offset from the start of the request
  std::size_t granules = 0;  // consecutive granules on `device`
  bool operator==(const PlacementSegment& o) const {
    return device == o.device && first == o.first && granules == o.granules;
  }
};

// `rooms` lists the participating devices in stripe order (the local device among them). Fills `out`
// with segments in address order, neighbours on the same device merged; false (and `out` empty) when
// the policy cannot place the request.
bool plan_placement(const PlacementRequest& request, const std::vector<DeviceRoom>& rooms,
                    std::vector<PlacementSegment>* out);

// What backing one segment did. out_of_memory lets the placement try elsewhere; failed does not.
enum class BackingResult { ok, out_of_memory, failed };

// Plans, then calls back(piece) for each segment in order, in address order. On out_of_memory: under
// local, fails; otherwise tries half the piece on the same device, and when one granule does not fit
// the device counts as full and the rest of the request is planned again. On failed, or when no plan
// fits: calls undo(piece) for every piece backed (last first) and returns false. True with `backed`
// holding the pieces that now hold memory, in address order. Never throws.
template <class Back, class Undo>
bool back_with_placement(const PlacementRequest& request, std::vector<DeviceRoom> rooms, Back&& back,
                         Undo&& undo, std::vector<PlacementSegment>* backed) noexcept;

// Bytes of physical memory mapped per device: where memory physically lives, for the statistics, the
// per-device cap and the out-of-memory report. Lock-free; devices are ordinals below `device_count`.
class PerDeviceBytes {
 public:
  explicit PerDeviceBytes(int device_count);
  void add(int device, std::size_t bytes) noexcept;
  void subtract(int device, std::size_t bytes) noexcept;
  std::size_t on(int device) const noexcept;  // 0 for an unknown device
  std::size_t total() const noexcept;
  int device_count() const noexcept { return count_; }

 private:
  int count_;
  std::unique_ptr<std::atomic<std::size_t>[]> bytes_;
};

// A provider whose memory may live on several devices. Both peer-capable providers implement it, so the
// router's statistics and OOM report can say where memory lives without knowing which one it holds.
class PlacedMemoryProvider : public MemoryProvider {
 public:
  virtual Placement placement() const noexcept = 0;
  virtual int local_device() const noexcept = 0;
  // Devices that may back memory and that every mapping is accessible from, ascending.
  virtual const std::vector<int>& participants() const noexcept = 0;
  virtual std::size_t bytes_mapped_on(int device) const noexcept = 0;
  // Device whose physical memory backs the byte at `address`; -1 when it is not mapped here.
  virtual int backing_device(const void* address) const noexcept = 0;
};

// "device 0: 1.50 GiB, device 1: 512.00 MiB" for the devices with memory mapped (or "nothing mapped"),
// into `buf` (never allocates; truncated to `size`). For the OOM report and the statistics.
const char* describe_placement(const PlacedMemoryProvider& provider, char* buf, std::size_t size) noexcept;

// ---------------------------------------------------------------------------------------------------
// Implementation of the template.

template <class Back, class Undo>
bool back_with_placement(const PlacementRequest& request, std::vector<DeviceRoom> rooms, Back&& back,
                         Undo&& undo, std::vector<PlacementSegment>* backed) noexcept {
  backed->clear();
  auto give_up = [&]() {
    for (auto it = backed->rbegin(); it != backed->rend(); ++it) undo(*it);
    backed->clear();
    return false;
  };
  try {
    // One record per back() at most: reserved up front so recording a success cannot throw.
    backed->reserve(request.granules);
    std::vector<PlacementSegment> plan;
    std::size_t position = 0;  // granules of the request backed so far, in address order
    // Each pass either finishes, or ends with one more device proven full (at most one pass per
    // participant), so the loop ends; within a pass every failed try halves the piece or proves the
    // device full, and every success moves `position` on.
    while (position < request.granules) {
      PlacementRequest rest = request;
      rest.first_granule += position;
      rest.granules -= position;
      if (!plan_placement(rest, rooms, &plan)) return give_up();
      bool device_found_full = false;
      for (const PlacementSegment& s : plan) {
        std::size_t offset = 0, try_granules = s.granules;
        while (offset < s.granules) {
          const PlacementSegment piece{s.device, position + s.first + offset,
                                       try_granules < s.granules - offset ? try_granules : s.granules - offset};
          const BackingResult result = back(piece);
          DeviceRoom* room = nullptr;
          for (DeviceRoom& r : rooms)
            if (r.device == s.device) room = &r;
          if (result == BackingResult::ok) {
            backed->push_back(piece);
            offset += piece.granules;
            if (room && room->granules != kUnknownRoom) room->granules -= piece.granules;
            continue;
          }
          // local has nowhere else to go: fail at once, with one driver call (as with one device).
          if (result == BackingResult::failed || request.policy == Placement::local) return give_up();
          if (piece.granules > 1) {
            try_granules = piece.granules / 2;  // the device may have room for part of it
            continue;
          }
          if (room) room->granules = 0;  // not even one granule: full, for the rest of this request
          device_found_full = true;
          break;
        }
        if (device_found_full) break;
      }
      position = 0;
      for (const PlacementSegment& b : *backed) position += b.granules;
    }
    return true;
  } catch (...) {
    return give_up();  // only the vectors throw (bad_alloc), never between a back() and its record
  }
}

}  // namespace gpushim
