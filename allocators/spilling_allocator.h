// Host spill (GPUSHIM_SPILL=host): the device's backend first, and a second arena over host memory
// mapped for the device for the blocks the device cannot hold (docs/host-spill.md).
//
// Which blocks go to the host: the allocation that does not fit, whole, and only as the last resort.
// allocate() is the device backend's, unchanged; the router asks allocate_spilled() only after its own
// out-of-memory steps (fences polled and waited for, cached memory given back, retried) have failed,
// i.e. exactly where the program would otherwise get CUDA_ERROR_OUT_OF_MEMORY. A block is never split
// between device and host: its bandwidth would be the host link's anyway, and a whole block keeps
// "which blocks were spilled" a question of one address range.
//
// Spilled blocks stay where they are until freed (no migration back): moving a live block means copying
// it while no GPU work of any stream or thread can touch it, and remapping its address; nothing short of
// stopping the program makes that exact. Memory comes back in a weaker but exact way: every new
// allocation tries the device first, so once device memory is freed, new blocks land there again.
//
// Idle host memory stays mapped in the host arena (up to GPUSHIM_VMM_RELEASE_THRESHOLD): pinning it
// costs ~0.25 s per GiB (cuMemCreate of host memory on the H100), so a training loop that spills each
// step must not pay that each step. release_cached() gives back only device memory, the memory the
// router's out-of-memory path is after; allocate_spilled() releases idle host memory itself when the
// spill cap is in the way.
#pragma once

#include <cstddef>
#include <memory>

#include "allocators/allocator.h"
#include "allocators/vmm_arena.h"

namespace gpushim {

class SpillingAllocator final : public Allocator {
 public:
  // `device`: the backend over the device's memory. `host`: an arena over host memory mapped for the
  // device (capped by GPUSHIM_SPILL_LIMIT through its provider).
  SpillingAllocator(std::unique_ptr<Allocator> device, std::unique_ptr<VmmArena> host) noexcept
      : device_(std::move(device)), host_(std::move(host)) {}

  const char* name() const noexcept override { return device_->name(); }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override {
    return device_->allocate(bytes, stream);
  }
  void* allocate_spilled(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override { return device_->release_cached(); }
  void release_idle() noexcept override {
    device_->release_idle();
    host_->release_idle();
  }
  // The device's: only the device backend has blocks kept in front of it (the thread caches).
  bool release_due_with(std::uint64_t held_in_front) noexcept override {
    return device_->release_due_with(held_in_front);
  }
  void hand_in_kept_blocks() noexcept override { device_->hand_in_kept_blocks(); }
  // The device backend's figures, plus the host arena's as the spill fields; calls and bytes in use
  // count both.
  AllocatorStats stats() const noexcept override;
  bool needs_free_fence() const noexcept override { return true; }  // both tiers reuse at once

  // True for a pointer inside a block served from host memory (one range check, no lock).
  bool is_spilled(const void* p) const noexcept { return host_->contains(p); }
  Allocator& device_tier() noexcept { return *device_; }
  VmmArena& host_tier() noexcept { return *host_; }

 private:
  std::unique_ptr<Allocator> device_;
  std::unique_ptr<VmmArena> host_;
};

}  // namespace gpushim
