// The CUDA provider: MemoryProvider over the CUDA VMM API for one device's backend, whose memory may
// live on several GPUs and be readable and writable from all of them (GPUSHIM_PEERS, GPUSHIM_PLACEMENT).
// With one participant (no GPUSHIM_PEERS, or one GPU) it is the one-device provider every provider
// backend runs on.
//
// The driver steps are providers/cuda_physical_memory.h; what is this provider's own is which devices
// take part, where each granule lives, and who is told about each mapping: IPC (physical memory is
// created shareable as a POSIX file descriptor, so a block can be passed to another process with
// cuIpcGetMemHandle, docs/ecosystem.md) and compute-sanitizer (one NVTX heap per mapping).
//
// reserve = cuMemAddressReserve. map() asks the placement policy which device backs
// each granule, then per segment cuMemCreate with location = that device and cuMemMap at the segment's
// address, then ONE cuMemSetAccess over the whole range with one read-write descriptor per participating
// device (cuMemSetAccess costs 30-54 us whatever the size, docs/measured-facts.md). No context is created on the peers:
// cuMemCreate names the device in its location, and VMM access needs no cuCtxEnablePeerAccess. This is
// how CUDA's simpleMallocMultiDeviceMmap sample stripes memory over devices.
// unmap = cuMemUnmap + cuMemRelease per segment of exactly what one map() mapped.
//
// Participation: the local device always; each other listed device only if it supports VMM and
// cuDeviceCanAccessPeer holds both ways with every device already taking part. A device left out is
// named once in a log line.
//
// With one participant and the local policy, map() makes one cuMemCreate, one cuMemMap and one
// cuMemSetAccess with one descriptor.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include <cuda.h>

#include "ipc/exportable_memory.h"
#include "providers/device_access.h"
#include "providers/cuda_physical_memory.h"
#include "providers/mapping_table.h"
#include "providers/placement_policy.h"
#include "tracing/trace_recorder.h"

namespace gpushim {

class CudaPeerProvider final : public PlacedMemoryProvider, public ipc::ExportableMemory, public DeviceAccess {
 public:
  // `device`: the allocating device (ordinal). `peers`: GPUSHIM_PEERS as written ("", "all", "0,1").
  // `per_device_cap`: bytes each device may back, by ordinal (GPUSHIM_LIMIT resolved per device);
  // missing or 0 = no cap. The cap bounds the memory all CUDA providers of the process together place
  // on that device, since every device's backend may place memory on the others. `ok()` is false when the local device has no VMM
  // support (then every map() fails and the router falls back to passthrough).
  CudaPeerProvider(int device, const std::string& peers, Placement placement,
                   std::vector<std::size_t> per_device_cap = {},
                   tracing::BackendId backend = tracing::BackendId::unknown) noexcept;
  // Never frees memory (device state lives until the process ends); stops IPC from asking it.
  ~CudaPeerProvider() override;
  CudaPeerProvider(const CudaPeerProvider&) = delete;
  CudaPeerProvider& operator=(const CudaPeerProvider&) = delete;

  bool ok() const noexcept { return ok_; }

  // MemoryProvider
  std::size_t granularity() const noexcept override { return granularity_; }
  void* reserve(std::size_t bytes) noexcept override;
  void release_reservation(void* base, std::size_t bytes) noexcept override;
  bool map(void* addr, std::size_t bytes) noexcept override;
  void unmap(void* addr, std::size_t bytes) noexcept override;
  std::size_t bytes_mapped() const noexcept override { return per_device_.total(); }

  // PlacedMemoryProvider
  Placement placement() const noexcept override { return placement_; }
  int local_device() const noexcept override { return device_; }
  const std::vector<int>& participants() const noexcept override { return participants_; }
  std::size_t bytes_mapped_on(int device) const noexcept override { return per_device_.on(device); }
  int backing_device(const void* address) const noexcept override;

  void reset_after_fork() noexcept;

  // DeviceAccess: the program enabled peer access (or a pool's access) for `device`. One cuMemSetAccess
  // per existing mapping (30-54 us each, once per grant), and every later map() names the device in its
  // one access call. Revoking sets PROT_NONE over every mapping for the device.
  bool grant_access(int device) noexcept override;
  void revoke_access(int device) noexcept override;

  // ipc::ExportableMemory: the segment (one cuMemCreate) that backs `p`.
  bool physical_handle_for(CUdeviceptr p, CUmemGenericAllocationHandle* handle, CUdeviceptr* chunk_base,
                           std::size_t* chunk_size) noexcept override;

 private:
  struct Segment {
    int device;
    std::size_t first;  // granule offset in the mapping
    std::size_t granules;
    CUmemGenericAllocationHandle handle;
  };
  struct Mapping {
    std::size_t bytes;
    std::vector<Segment> segments;
  };

  void choose_participants(const std::string& peers) noexcept;
  std::size_t cap_of(int device) const noexcept;

  const int device_;
  const Placement placement_;
  const tracing::BackendId backend_;
  const std::vector<std::size_t> per_device_cap_;
  CUcontext context_ = nullptr;  // the device's context, current when the provider was built
  bool ok_ = false;
  // Physical memory is asked for shareable (IPC export) until the driver refuses it once.
  std::atomic<bool> shareable_{true};
  std::size_t granularity_ = kFallbackVmmGranularity;
  std::vector<int> participants_;
  std::vector<CUmemAccessDesc> access_;  // one read-write descriptor per participant and granted device
  PerDeviceBytes per_device_;
  mutable std::mutex mutex_;  // map/unmap are 15-300 us driver calls; one lock is no bottleneck
  MappingTable<Mapping> mappings_;
};

}  // namespace gpushim
