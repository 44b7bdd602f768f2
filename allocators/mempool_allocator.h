// The driver's stream-ordered allocator: one cuMemPoolCreate pool per device, owned by gpushim (never
// the device's default pool, which the program may configure or use itself).
//
// Stream-ordered: allocate(bytes, S) = cuMemAllocFromPoolAsync on S, deallocate(p, bytes, S) =
// cuMemFreeAsync on S; the pool itself makes a block freed on S reusable on S at once and elsewhere only
// once S has reached the free. How the router uses it (router/router.cpp, docs/free-safety.md):
//  - cuMemFreeAsync(p, S) goes straight to deallocate(p, bytes, S): the pool's own ordering is exact.
//  - cuMemFree(p) must not let p be reused while work on *any* stream may still touch it, and a free on
//    the legacy stream does not wait for non-blocking streams. So needs_free_fence() stays true: the
//    router holds p until its free fence (legacy stream + every non-blocking stream) has completed, and
//    only then calls deallocate(p, bytes, 0), which frees on the legacy stream. At that point no work
//    can use p, so the pool may hand it to anyone.
//  - cuMemAlloc (stream 0) is served from a second pool, on a private stream nothing else uses, with
//    the pool's dependency-following reuse switched off: it only reuses blocks whose free has completed
//    on the GPU. Measured on the H100: with one pool on the legacy stream, a block the program freed
//    with cudaFreeAsync on S was handed to cudaMalloc with a dependency inserted into the legacy stream
//    only, and a kernel on a non-blocking stream then raced S's work (alloc_torture: mismatches).
#pragma once

#include <atomic>
#include <cstdint>

#include <cuda.h>

#include "allocators/allocator.h"
#include "providers/device_access.h"

namespace gpushim {

class MempoolAllocator final : public Allocator, public DeviceAccess {
 public:
  // release_threshold: bytes the pool keeps reserved when idle (CU_MEMPOOL_ATTR_RELEASE_THRESHOLD);
  // 0 means keep everything (UINT64_MAX), the setting that makes a pool fast.
  MempoolAllocator(int device, std::uint64_t release_threshold) noexcept;
  ~MempoolAllocator() override = default;  // the pool lives until the process ends (no driver call at exit)

  bool ok() const noexcept { return pool_ != nullptr; }
  const char* name() const noexcept override { return "mempool"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override;
  // No driver call (it runs at exit for GPUSHIM_STATS): reserved bytes are what the pool reported the
  // last time we asked (at release_cached()), or at least the peak in use, since a pool that keeps
  // everything never shrinks below its peak.
  AllocatorStats stats() const noexcept override;

  // DeviceAccess: cuMemPoolSetAccess on both pools, which covers their blocks present and future.
  bool grant_access(int device) noexcept override;
  void revoke_access(int device) noexcept override;

 private:
  // Stream 0 is "no order: usable from any stream at once": the private stream, which never has work.
  CUstream to_stream(StreamHandle stream) const noexcept {
    return stream ? reinterpret_cast<CUstream>(stream) : private_stream_;
  }
  const int device_;
  CUmemoryPool pool_ = nullptr;       // cuMemAllocAsync: the driver's stream-ordered reuse, unchanged
  CUmemoryPool sync_pool_ = nullptr;  // cuMemAlloc: reuses only blocks whose free has completed
  CUstream private_stream_ = nullptr;
  std::atomic<std::uint64_t> in_use_{0};
  std::atomic<std::uint64_t> peak_{0};
  std::atomic<std::uint64_t> reserved_seen_{0};
  std::atomic<std::uint64_t> peak_reserved_seen_{0};
};

}  // namespace gpushim
