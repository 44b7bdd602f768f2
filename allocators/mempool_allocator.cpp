#include "allocators/mempool_allocator.h"

#include <algorithm>

#include "allocators/raise_peak.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"

namespace gpushim {

namespace {

CUmemoryPool create_pool(int device, std::uint64_t release_threshold, bool follow_dependencies) noexcept {
  const RealDriver& driver = real_driver();
  CUmemPoolProps props{};
  props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  // Shareable, so that cuIpcGetMemHandle on a block can export the pool (ipc/cuda_ipc.cpp); where the
  // platform has no POSIX-fd sharing the pool is made without it and IPC of its blocks is refused.
  props.handleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  props.location.id = device;
  CUmemoryPool pool = nullptr;
  CUresult rc = driver.cuMemPoolCreate(&pool, &props);
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::info, "device %d: a shareable memory pool is not available (%d); its blocks cannot be IPC-exported",
        device, static_cast<int>(rc));
    props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
    rc = driver.cuMemPoolCreate(&pool, &props);
  }
  if (rc != CUDA_SUCCESS) {
    log(LogLevel::warn, "device %d: cuMemPoolCreate failed (%d)", device, static_cast<int>(rc));
    return nullptr;
  }
  cuuint64_t threshold = release_threshold ? release_threshold : UINT64_MAX;
  rc = driver.cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold);
  if (rc != CUDA_SUCCESS)
    log(LogLevel::warn, "device %d: setting the pool's release threshold failed (%d)", device, static_cast<int>(rc));
  if (!follow_dependencies) {
    int off = 0;
    if (driver.cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES, &off) != CUDA_SUCCESS ||
        driver.cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES, &off) != CUDA_SUCCESS) {
      log(LogLevel::warn, "device %d: could not restrict the pool's reuse; mempool unavailable", device);
      driver.cuMemPoolDestroy(pool);
      return nullptr;
    }
  }
  return pool;
}

}  // namespace

MempoolAllocator::MempoolAllocator(int device, std::uint64_t release_threshold) noexcept : device_(device) {
  CUstream stream = nullptr;
  if (real_driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) {
    log(LogLevel::warn, "device %d: could not create the mempool's stream", device);
    return;
  }
  CUmemoryPool sync_pool = create_pool(device, release_threshold, false);
  CUmemoryPool pool = sync_pool ? create_pool(device, release_threshold, true) : nullptr;
  if (!pool) return;
  private_stream_ = stream;
  sync_pool_ = sync_pool;
  pool_ = pool;
}

void* MempoolAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  if (!pool_) return nullptr;
  CUdeviceptr p = 0;
  CUmemoryPool pool = stream ? pool_ : sync_pool_;
  if (real_driver().cuMemAllocFromPoolAsync(&p, bytes, pool, to_stream(stream)) != CUDA_SUCCESS) return nullptr;
  raise_peak(peak_, in_use_.fetch_add(bytes, std::memory_order_relaxed) + bytes);
  return reinterpret_cast<void*>(p);
}

void MempoolAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  real_driver().cuMemFreeAsync(reinterpret_cast<CUdeviceptr>(p), to_stream(stream));
  in_use_.fetch_sub(bytes, std::memory_order_relaxed);
}

std::size_t MempoolAllocator::release_cached() noexcept {
  if (!pool_) return 0;
  const RealDriver& driver = real_driver();
  cuuint64_t before = 0, after = 0, high = 0;
  // Frees enqueued on streams are only released once those streams have reached them; trimming gives
  // back what is already free.
  for (CUmemoryPool pool : {pool_, sync_pool_}) {
    cuuint64_t value = 0;
    driver.cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &value);
    before += value;
    driver.cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, &value);
    high += value;
    driver.cuMemPoolTrimTo(pool, 0);
    driver.cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &value);
    after += value;
  }
  reserved_seen_.store(after, std::memory_order_relaxed);
  raise_peak(peak_reserved_seen_, high);  // two threads' trims at once must not lower it
  return before > after ? static_cast<std::size_t>(before - after) : 0;
}

AllocatorStats MempoolAllocator::stats() const noexcept {
  AllocatorStats s;
  s.bytes_in_use = in_use_.load(std::memory_order_relaxed);
  s.peak_bytes_in_use = peak_.load(std::memory_order_relaxed);
  s.bytes_reserved = std::max(s.bytes_in_use, reserved_seen_.load(std::memory_order_relaxed));
  s.peak_bytes_reserved = std::max(s.peak_bytes_in_use, peak_reserved_seen_.load(std::memory_order_relaxed));
  s.bytes_cached = s.bytes_reserved - s.bytes_in_use;
  s.largest_free_block = 0;  // the pool does not tell
  return s;
}

bool MempoolAllocator::grant_access(int device) noexcept {
  if (!pool_ || device == device_) return pool_ != nullptr;
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = device;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  const RealDriver& driver = real_driver();
  for (CUmemoryPool pool : {pool_, sync_pool_}) {
    const CUresult rc = driver.cuMemPoolSetAccess(pool, &access, 1);
    if (rc != CUDA_SUCCESS) {
      log(LogLevel::info, "device %d: cuMemPoolSetAccess for device %d failed: %d", device_, device,
          static_cast<int>(rc));
      return false;
    }
  }
  return true;
}

void MempoolAllocator::revoke_access(int device) noexcept {
  if (!pool_ || device == device_) return;
  CUmemAccessDesc none{};
  none.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  none.location.id = device;
  none.flags = CU_MEM_ACCESS_FLAGS_PROT_NONE;
  for (CUmemoryPool pool : {pool_, sync_pool_}) real_driver().cuMemPoolSetAccess(pool, &none, 1);
}

}  // namespace gpushim
