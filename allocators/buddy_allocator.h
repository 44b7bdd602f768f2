// Power-of-two buddy system over large regions taken from a MemoryProvider (Knuth's buddy system).
//
// A request is rounded up to a power of two (at least kBuddyMinBlock) and served from a region: one
// provider reservation mapped whole in a single map() call, so the driver is touched once per region
// and never on the common path. Splitting a block gives two halves ("buddies") whose addresses differ
// only in one bit; freeing merges a block with its buddy for as long as the buddy is free too, so
// split and merge each walk at most log2(region / kBuddyMinBlock) orders.
//
// The price is rounding: a 129 MiB request occupies a 256 MiB block. That waste is reported as
// AllocatorStats::internal_waste so users can see it (it is this backend's weak point).
//
// Free-block bookkeeping lives in host memory (never inside the blocks: they may be device memory the
// CPU cannot touch). One mutex guards it: the buddy's merges cross size classes, so per-class locks
// would not remove the contention, and the tiered default sends hot small sizes to the slab instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "allocators/allocator.h"
#include "config/settings.h"
#include "providers/memory_provider.h"

namespace gpushim {

// Smallest block: the block alignment (512 B), so every block address is aligned for free.
inline constexpr std::size_t kBuddyMinBlock = kMinAlignment;

// 1 GiB: large enough that every tensor of a typical training step (up to a few hundred MiB) is a
// buddy block, small enough that one region is ~1% of an 80 GiB H100. Mapping it costs one
// cuMemCreate + cuMemSetAccess (~75 us measured for 512 MiB), paid once per region.
inline constexpr std::size_t kDefaultBuddyRegion = std::size_t{1} << 30;

class BuddyAllocator final : public Allocator {
 public:
  // `region_bytes` is rounded up to a power of two. Requests larger than a region get their own
  // dedicated mapped range, as do requests made when no new region can be mapped (near the memory cap,
  // a full region may not fit while the request does).
  BuddyAllocator(MemoryProvider& provider, std::size_t region_bytes) noexcept;
  ~BuddyAllocator() override;

  const char* name() const noexcept override { return "buddy"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override;
  AllocatorStats stats() const noexcept override;

  // For tests: regions mapped now, and whether every region is exactly one free or split tree whose
  // free blocks never have a free buddy (the merge invariant). Takes the lock.
  std::size_t region_count() const noexcept;
  bool free_blocks_fully_merged() const noexcept;
  // Number of free blocks across all orders (after freeing everything: one per region).
  std::size_t free_block_count() const noexcept;

 private:
  struct Region {
    std::uintptr_t base = 0;
    std::size_t bytes = 0;         // power of two: the root block
    std::size_t mapped_bytes = 0;  // bytes rounded up to the provider granularity
    unsigned order = 0;            // order of the root block
    std::size_t live_blocks = 0;
  };

  unsigned order_for(std::size_t bytes) const noexcept;
  static std::size_t block_bytes(unsigned order) noexcept { return kBuddyMinBlock << order; }
  void* allocate_locked(std::size_t bytes) noexcept;
  void* take_block_locked(unsigned order) noexcept;
  bool add_region_locked(unsigned min_order) noexcept;
  void* allocate_dedicated_locked(std::size_t bytes) noexcept;
  Region* region_of_locked(std::uintptr_t address) noexcept;
  void release_region_locked(std::map<std::uintptr_t, Region>::iterator it) noexcept;
  void note_reserved_locked() noexcept;

  MemoryProvider& provider_;
  const std::size_t granularity_;
  const unsigned max_order_;  // order of a configured region

  mutable std::mutex mutex_;
  // One set of free block addresses per order. Ordered so the lowest address is handed out first:
  // live blocks pack toward low regions, which lets high regions empty out and go back.
  // Each set operation is O(log n); the buddy-state lookup during a merge is set::find.
  std::vector<std::set<std::uintptr_t>> free_by_order_;
  std::map<std::uintptr_t, Region> regions_;                      // by base
  std::unordered_map<std::uintptr_t, std::size_t> dedicated_;     // base -> mapped bytes

  AllocatorStats stats_;
};

// GPUSHIM_BUDDY_REGION (0 = kDefaultBuddyRegion).
std::unique_ptr<Allocator> make_buddy_allocator(MemoryProvider& provider, const Settings& settings);

}  // namespace gpushim
