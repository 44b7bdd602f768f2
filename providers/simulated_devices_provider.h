// A PlacedMemoryProvider over host memory that pretends to be several GPUs, each with its own physical
// capacity: the CPU stand-in for CudaPeerProvider, so the placement policies, the per-device accounting
// and the arena running over several devices are tested without a GPU.
//
// It runs the same placement code as the GPU provider (back_with_placement), segment by segment, and
// keeps the VMM rules through an inner HostProvider (one host mapping per segment, as one cuMemCreate +
// cuMemMap per segment on the GPU). By default, like the GPU, it does not tell the planner how much room a
// device has: a device is found full when backing a segment there fails. `rooms_known` tells it instead,
// to test the plans that exact knowledge gives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "providers/host_provider.h"
#include "providers/placement_policy.h"

namespace gpushim {

struct SimulatedDevicesOptions {
  std::vector<std::size_t> capacities;  // physical bytes of each simulated device, by ordinal
  int local_device = 0;                 // the device that allocates
  std::vector<int> participants;        // devices that may back memory; empty = all. Local is added.
  Placement placement = Placement::local;
  std::size_t granularity = HostProvider::kDefaultGranularity;
  bool rooms_known = false;             // false: learn a full device by failing, as on the GPU
};

class SimulatedDevicesProvider final : public PlacedMemoryProvider {
 public:
  explicit SimulatedDevicesProvider(const SimulatedDevicesOptions& options);
  SimulatedDevicesProvider(const SimulatedDevicesProvider&) = delete;
  SimulatedDevicesProvider& operator=(const SimulatedDevicesProvider&) = delete;

  // MemoryProvider
  std::size_t granularity() const noexcept override { return host_.granularity(); }
  void* reserve(std::size_t bytes) noexcept override { return host_.reserve(bytes); }
  void release_reservation(void* base, std::size_t bytes) noexcept override {
    host_.release_reservation(base, bytes);
  }
  bool map(void* addr, std::size_t bytes) noexcept override;
  void unmap(void* addr, std::size_t bytes) noexcept override;
  std::size_t bytes_mapped() const noexcept override { return per_device_.total(); }

  // PlacedMemoryProvider
  Placement placement() const noexcept override { return placement_; }
  int local_device() const noexcept override { return local_device_; }
  const std::vector<int>& participants() const noexcept override { return participants_; }
  std::size_t bytes_mapped_on(int device) const noexcept override { return per_device_.on(device); }
  int backing_device(const void* address) const noexcept override;

  // Segments backed (host mappings made) so far, and VMM-rule breaches (see HostProvider).
  std::size_t segments_backed() const noexcept { return segments_backed_; }
  std::size_t misuse_count() const noexcept { return misuse_ + host_.misuse_count(); }

 private:
  struct Mapping {
    std::size_t bytes;
    std::vector<PlacementSegment> segments;
  };

  HostProvider host_;
  const std::vector<std::size_t> capacities_;
  const int local_device_;
  const Placement placement_;
  const bool rooms_known_;
  std::vector<int> participants_;
  PerDeviceBytes per_device_;
  mutable std::mutex mutex_;                        // map/unmap are the cold path
  std::map<std::uintptr_t, Mapping> mappings_;      // addr -> one map() call
  std::size_t segments_backed_ = 0;                 // under mutex_
  std::size_t misuse_ = 0;                          // under mutex_
};

}  // namespace gpushim
