#include "providers/cuda_peer_provider.h"

#include <algorithm>
#include <new>

#include "annotations/nvtx_memory.h"
#include "annotations/nvtx_ranges.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"

namespace gpushim {
namespace {

int device_count() noexcept {
  int count = 0;
  const RealDriver& driver = real_driver();
  if (!driver.loaded || !driver.cuDeviceGetCount || driver.cuDeviceGetCount(&count) != CUDA_SUCCESS) return 0;
  return count;
}

// The minimum VMM granularity of `device`, 0 when the device has no VMM support or the driver says no.
std::size_t vmm_granularity(int device) noexcept {
  const RealDriver& driver = real_driver();
  CUdevice dev = 0;
  int supported = 0;
  if (driver.cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
      driver.cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev) !=
          CUDA_SUCCESS ||
      !supported)
    return 0;
  std::size_t granularity = 0;
  if (minimum_granularity(pinned_memory_on(device), &granularity) != CUDA_SUCCESS) return 0;
  return granularity;
}

// cuDeviceCanAccessPeer both ways. Access to VMM memory needs only this capability plus the access
// descriptor, not cuCtxEnablePeerAccess (which is for cuMemAlloc memory).
bool peers_both_ways(int a, int b, CUresult* rc_out) noexcept {
  const RealDriver& driver = real_driver();
  CUdevice da = 0, db = 0;
  int ab = 0, ba = 0;
  CUresult rc = driver.cuDeviceGet(&da, a);
  if (rc == CUDA_SUCCESS) rc = driver.cuDeviceGet(&db, b);
  if (rc == CUDA_SUCCESS) rc = driver.cuDeviceCanAccessPeer(&ab, da, db);
  if (rc == CUDA_SUCCESS) rc = driver.cuDeviceCanAccessPeer(&ba, db, da);
  *rc_out = rc;
  return rc == CUDA_SUCCESS && ab && ba;
}

// Physical memory every CUDA provider of the process has mapped, per device: a per-device cap
// (GPUSHIM_LIMIT under GPUSHIM_PEERS) bounds what all backends together place on a device, since each
// device's backend may place memory on the others. Never destroyed (exit-time frees).
PerDeviceBytes& process_bytes() {
  static auto* bytes = new PerDeviceBytes(device_count());
  return *bytes;
}
// Held by a capped map() from reading the room to recording what it mapped, so two backends cannot
// both take the last room of a device. map() is the slow path (15-300 us of driver calls).
std::mutex& capped_map_lock() {
  static auto* lock = new std::mutex();
  return *lock;
}

}  // namespace

CudaPeerProvider::CudaPeerProvider(int device, const std::string& peers, Placement placement,
                                   std::vector<std::size_t> per_device_cap, tracing::BackendId backend) noexcept
    : device_(device),
      placement_(placement),
      backend_(backend),
      per_device_cap_(std::move(per_device_cap)),
      per_device_(device_count()) {
  const RealDriver& driver = real_driver();
  if (!driver.loaded || !driver.cuMemGetAllocationGranularity || !driver.cuDeviceGetAttribute) return;
  const std::size_t local_granularity = vmm_granularity(device);
  if (local_granularity == 0) {
    log(LogLevel::warn, "device %d: no virtual memory management", device);
    return;
  }
  granularity_ = local_granularity;
  driver.cuCtxGetCurrent(&context_);
  choose_participants(peers);
  ok_ = !participants_.empty();
  if (ok_) ipc::register_exportable_memory(this);
}

void CudaPeerProvider::choose_participants(const std::string& peers) noexcept {
  try {
    const int count = per_device_.device_count();
    std::vector<int> wanted = peer_devices_from_setting(peers, count, device_);
    participants_.push_back(device_);
    for (int peer : wanted) {
      if (peer == device_) continue;
      const std::size_t peer_granularity = vmm_granularity(peer);
      if (peer_granularity == 0) {
        log(LogLevel::warn, "GPUSHIM_PEERS: device %d left out: no virtual memory management", peer);
        continue;
      }
      bool reachable = true;
      for (int member : participants_) {
        CUresult rc = CUDA_SUCCESS;
        if (!peers_both_ways(member, peer, &rc)) {
          log(LogLevel::warn, "GPUSHIM_PEERS: device %d left out: no peer access with device %d (%d)", peer,
              member, static_cast<int>(rc));
          reachable = false;
          break;
        }
      }
      if (!reachable) continue;
      // Every segment's size and address must suit every device's granularity; they are powers of two,
      // so the largest is a multiple of all.
      granularity_ = std::max(granularity_, peer_granularity);
      participants_.push_back(peer);
    }
    std::sort(participants_.begin(), participants_.end());
    for (int member : participants_) access_.push_back(read_write_access_from(member));
    if (participants_.size() > 1 || placement_ != Placement::local)
      log(LogLevel::info, "device %d: memory shared with %zu device(s), placement %s", device_,
          participants_.size(), placement_name(placement_));
  } catch (...) {
    participants_.clear();
    access_.clear();
  }
}

std::size_t CudaPeerProvider::cap_of(int device) const noexcept {
  if (device < 0 || static_cast<std::size_t>(device) >= per_device_cap_.size()) return 0;
  return per_device_cap_[static_cast<std::size_t>(device)];
}

CudaPeerProvider::~CudaPeerProvider() {
  if (ok_) ipc::unregister_exportable_memory(this);
}

void* CudaPeerProvider::reserve(std::size_t bytes) noexcept {
  if (!ok_) return nullptr;
  return reserve_address_space(device_, bytes, granularity_);
}

void CudaPeerProvider::release_reservation(void* base, std::size_t bytes) noexcept {
  free_address_space(base, bytes);
}

bool CudaPeerProvider::map(void* addr, std::size_t bytes) noexcept {
  if (!ok_ || bytes == 0 || bytes % granularity_ != 0) return false;
  const CUdeviceptr base = reinterpret_cast<CUdeviceptr>(addr);
  if (base % granularity_ != 0) return false;
  const std::size_t g = granularity_;
  annotations::ScopedRange range(annotations::SlowEvent::arena_growth);

  std::unique_lock<std::mutex> capped;
  if (!per_device_cap_.empty()) capped = std::unique_lock<std::mutex>(capped_map_lock());
  std::lock_guard<std::mutex> guard(mutex_);
  PlacementRequest request;
  request.policy = placement_;
  request.local_device = device_;
  request.first_granule = base / g;  // stripe by address: the same stripe whichever map() mapped it
  request.granules = bytes / g;

  std::vector<DeviceRoom> rooms;
  std::vector<Segment> segments;
  try {
    // The free memory of a device is not known without a context there; only a cap is. The rest is
    // learned from cuMemCreate's CUDA_ERROR_OUT_OF_MEMORY (back_with_placement).
    for (int member : participants_) {
      const std::size_t cap = cap_of(member);
      const std::size_t used = process_bytes().on(member);
      rooms.push_back(DeviceRoom{member, cap == 0 ? kUnknownRoom : (cap > used ? (cap - used) / g : 0)});
    }
    segments.reserve(request.granules);  // at most one piece per granule
  } catch (...) {
    return false;
  }

  auto back = [&](const PlacementSegment& s) {
    const std::size_t seg_bytes = s.granules * g;
    const CUdeviceptr at = base + s.first * g;
    CUmemAllocationProp prop = pinned_memory_on(s.device);
    // Shareable so blocks can be exported to other processes; create_and_map drops the request when
    // the driver refuses it, and then memory is simply not exportable.
    if (shareable_.load(std::memory_order_relaxed)) prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CUmemGenericAllocationHandle handle = 0;
    const MapResult mapped = create_and_map(at, seg_bytes, &prop, &handle);
    if (prop.requestedHandleTypes == CU_MEM_HANDLE_TYPE_NONE) shareable_.store(false, std::memory_order_relaxed);
    if (mapped == MapResult::out_of_memory) return BackingResult::out_of_memory;
    if (mapped == MapResult::failed) return BackingResult::failed;
    try {
      segments.push_back(Segment{s.device, s.first, s.granules, handle});
    } catch (...) {
      unmap_and_release(at, seg_bytes, handle);
      return BackingResult::failed;
    }
    return BackingResult::ok;
  };
  // Called for the segments backed so far, last first: `segments` holds them in the same order.
  auto undo = [&](const PlacementSegment& s) {
    if (segments.empty()) return;
    const Segment last = segments.back();
    segments.pop_back();
    unmap_and_release(base + last.first * g, last.granules * g, last.handle);
    (void)s;
  };

  std::vector<PlacementSegment> backed;
  if (!back_with_placement(request, std::move(rooms), back, undo, &backed)) return false;

  // One access call for the whole range and every participant (one descriptor each). The record copies
  // `segments`, so they are still here to undo the mapping should the copy fail.
  if (!set_access(base, bytes, access_.data(), access_.size(), device_) ||
      !mappings_.record(static_cast<std::uintptr_t>(base), Mapping{bytes, segments})) {
    for (auto it = segments.rbegin(); it != segments.rend(); ++it)
      unmap_and_release(base + it->first * g, it->granules * g, it->handle);
    return false;
  }
  // A heap for compute-sanitizer per mapping: the tool accepts a heap only over memory it tracks as
  // allocated, which for VMM is a mapped range (a bare reservation is ignored).
  annotations::on_memory_mapped(static_cast<std::uintptr_t>(base), bytes, device_);
  for (const Segment& s : segments) {
    per_device_.add(s.device, s.granules * g);
    process_bytes().add(s.device, s.granules * g);
    // Recorded with the device that holds the memory, so a trace shows where memory lives.
    tracing::record(tracing::EventKind::map, s.device, 0, base + s.first * g, s.granules * g, backend_);
  }
  return true;
}

void CudaPeerProvider::unmap(void* addr, std::size_t bytes) noexcept {
  const CUdeviceptr base = reinterpret_cast<CUdeviceptr>(addr);
  const std::size_t g = granularity_;
  Mapping mapping{};
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!mappings_.take(addr, bytes, &mapping)) return;
  }
  // The device this provider was built for, whichever context the freeing thread has current.
  wait_for_device_work(context_);
  annotations::on_memory_unmapping(static_cast<std::uintptr_t>(base));  // the heap ends with the mapping
  for (const Segment& s : mapping.segments) {
    const CUdeviceptr at = base + s.first * g;
    unmap_and_release(at, s.granules * g, s.handle);
    per_device_.subtract(s.device, s.granules * g);
    process_bytes().subtract(s.device, s.granules * g);
    tracing::record(tracing::EventKind::unmap, s.device, 0, at, s.granules * g, backend_);
  }
}

int CudaPeerProvider::backing_device(const void* address) const noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(address);
  std::lock_guard<std::mutex> guard(mutex_);
  std::uintptr_t base = 0;
  const Mapping* mapping = mappings_.covering(a, &base);
  if (!mapping) return -1;
  const std::size_t granule = (a - base) / granularity_;
  for (const Segment& s : mapping->segments)
    if (granule >= s.first && granule < s.first + s.granules) return s.device;
  return -1;
}

bool CudaPeerProvider::grant_access(int device) noexcept {
  if (!ok_ || device < 0) return false;
  std::lock_guard<std::mutex> guard(mutex_);
  for (const CUmemAccessDesc& a : access_)
    if (a.location.id == device) return true;
  // The memory may lie on every participant (GPUSHIM_PEERS): a device that cannot reach one of them (a
  // machine without a link between every pair of GPUs) cannot be given access to it. Named in the
  // access list anyway, it would make every later map() that places a granule there fail.
  for (int member : participants_) {
    CUresult rc = CUDA_SUCCESS;
    if (member != device && !peers_both_ways(member, device, &rc)) {
      log(LogLevel::warn,
          "device %d: device %d cannot be given access to gpushim's memory: it has no peer access to device %d, "
          "which backs part of it (GPUSHIM_PEERS: list only devices that reach each other)",
          device_, device, member);
      return false;
    }
  }
  const CUmemAccessDesc access = read_write_access_from(device);
  // Every existing mapping first, so a failure leaves the list as it was; a mapping already granted is
  // harmless to grant again should a later one fail.
  bool granted = true;
  mappings_.for_each([&](std::uintptr_t base, const Mapping& mapping) {
    if (granted) granted = set_access(static_cast<CUdeviceptr>(base), mapping.bytes, &access, 1, device_);
  });
  if (!granted) return false;
  try {
    access_.push_back(access);
  } catch (...) {
    return false;
  }
  log(LogLevel::debug, "device %d: memory now accessible from device %d", device_, device);
  return true;
}

void CudaPeerProvider::revoke_access(int device) noexcept {
  if (std::find(participants_.begin(), participants_.end(), device) != participants_.end()) return;
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = std::find_if(access_.begin(), access_.end(),
                         [&](const CUmemAccessDesc& a) { return a.location.id == device; });
  if (it == access_.end()) return;
  access_.erase(it);
  CUmemAccessDesc none = read_write_access_from(device);
  none.flags = CU_MEM_ACCESS_FLAGS_PROT_NONE;
  mappings_.for_each([&](std::uintptr_t base, const Mapping& mapping) {
    // A driver that refuses to revoke leaves the access in place: more than native, never less.
    set_access(static_cast<CUdeviceptr>(base), mapping.bytes, &none, 1, device_);
  });
}

bool CudaPeerProvider::physical_handle_for(CUdeviceptr p, CUmemGenericAllocationHandle* handle,
                                           CUdeviceptr* chunk_base, std::size_t* chunk_size) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  std::uintptr_t base = 0;
  const Mapping* mapping = mappings_.covering(static_cast<std::uintptr_t>(p), &base);
  if (!mapping) return false;
  const std::size_t granule = (static_cast<std::uintptr_t>(p) - base) / granularity_;
  for (const Segment& s : mapping->segments) {
    if (granule < s.first || granule >= s.first + s.granules) continue;
    *handle = s.handle;
    *chunk_base = static_cast<CUdeviceptr>(base + s.first * granularity_);
    *chunk_size = s.granules * granularity_;
    return true;
  }
  return false;
}

void CudaPeerProvider::reset_after_fork() noexcept { new (&mutex_) std::mutex(); }

}  // namespace gpushim
