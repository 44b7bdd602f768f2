#include "allocators/passthrough_allocator.h"

#include <cuda.h>

#include "allocators/raise_peak.h"
#include "driver/real_driver.h"

namespace gpushim {

void* PassthroughAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  // cuMemAllocAsync (a stream) stays the driver's: its block comes from the device's current pool, so
  // what the program sets on that pool (cudaMemPoolSetAccess, its attributes) applies as natively.
  CUdeviceptr p = 0;
  const CUresult rc = stream ? real_driver().cuMemAllocAsync(&p, bytes, reinterpret_cast<CUstream>(stream))
                             : real_driver().cuMemAlloc(&p, bytes);
  if (rc != CUDA_SUCCESS) return nullptr;
  raise_peak(peak_, in_use_.fetch_add(bytes, std::memory_order_relaxed) + bytes);
  return reinterpret_cast<void*>(p);
}

void PassthroughAllocator::deallocate(void* p, std::size_t bytes, StreamHandle) noexcept {
  // cuMemFree waits for the GPU work that may still use a cuMemAlloc block, so no fence is needed; for a
  // pool block it does not wait, as natively for cudaFree of a cudaMallocAsync block. An async free
  // reaches here only after the router's fence on its stream has completed.
  real_driver().cuMemFree(reinterpret_cast<CUdeviceptr>(p));
  in_use_.fetch_sub(bytes, std::memory_order_relaxed);
}

AllocatorStats PassthroughAllocator::stats() const noexcept {
  AllocatorStats s;
  s.bytes_in_use = in_use_.load(std::memory_order_relaxed);
  s.peak_bytes_in_use = peak_.load(std::memory_order_relaxed);
  // The driver's own reservation is invisible to us: what we hold is what is live.
  s.bytes_reserved = s.bytes_in_use;
  s.peak_bytes_reserved = s.peak_bytes_in_use;
  return s;
}

}  // namespace gpushim
