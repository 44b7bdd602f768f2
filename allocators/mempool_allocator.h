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
//  - cuMemAlloc is served with stream 0, i.e. on the legacy stream: a block the pool reuses there was
//    freed after its fence, so using it at once from any stream is safe.
#pragma once

#include <atomic>
#include <cstdint>

#include <cuda.h>

#include "allocators/allocator.h"

namespace gpushim {

class MempoolAllocator final : public Allocator {
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

 private:
  static CUstream to_stream(StreamHandle stream) noexcept {
    return stream ? reinterpret_cast<CUstream>(stream) : CU_STREAM_LEGACY;
  }
  const int device_;
  CUmemoryPool pool_ = nullptr;
  std::atomic<std::uint64_t> in_use_{0};
  std::atomic<std::uint64_t> peak_{0};
  std::atomic<std::uint64_t> reserved_seen_{0};
  std::atomic<std::uint64_t> peak_reserved_seen_{0};
};

}  // namespace gpushim
