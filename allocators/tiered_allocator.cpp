#include "allocators/tiered_allocator.h"

#include <algorithm>

#include "allocators/arena_shards.h"
#include "allocators/growth_policy.h"
#include "allocators/slab_allocator.h"
#include "allocators/vmm_arena.h"

namespace gpushim {

TieredAllocator::TieredAllocator(std::unique_ptr<Allocator> small, std::unique_ptr<Allocator> large,
                                 std::size_t split_bytes) noexcept
    : large_(std::move(large)), small_(std::move(small)), split_bytes_(split_bytes) {}

TieredAllocator::TieredAllocator(std::unique_ptr<Allocator> large, std::unique_ptr<BlockMemoryProvider> small_memory,
                                 std::unique_ptr<SlabAllocator> small, std::size_t split_bytes) noexcept
    : large_(std::move(large)),
      small_memory_(std::move(small_memory)),
      small_(std::move(small)),
      arena_slabs_(static_cast<SlabAllocator*>(small_.get())),
      split_bytes_(split_bytes) {}

TieredAllocator::~TieredAllocator() = default;

void* TieredAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  if (bytes <= split_bytes_) return small_->allocate(bytes, stream);
  if (new_peak_refused()) return large_->allocate(bytes, stream);  // the caller waits, then asks again
  {
    NoNewPeakScope no_new_peak;
    if (void* p = large_->allocate(bytes, stream)) return p;
  }
  // The large tier must grow past its peak: the small tier's empty slabs go back first (to the arena,
  // where this block may then fit; or, over memory of its own, to the driver), so the process's peak
  // does not hold both.
  small_->release_cached();
  return large_->allocate(bytes, stream);
}

void* TieredAllocator::allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept {
  return bytes <= split_bytes_ ? small_->allocate(bytes, stream) : large_->allocate_without_growing(bytes, stream);
}

void TieredAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  if (bytes <= split_bytes_)
    small_->deallocate(p, bytes, stream);
  else
    large_->deallocate(p, bytes, stream);
}

void TieredAllocator::deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept {
  BlockToFree* const large = std::partition(blocks, blocks + count,
                                            [this](const BlockToFree& b) { return b.bytes <= split_bytes_; });
  small_->deallocate_batch(blocks, static_cast<std::size_t>(large - blocks));
  large_->deallocate_batch(large, static_cast<std::size_t>(blocks + count - large));
}

bool TieredAllocator::release_due_with(std::uint64_t held_in_front) noexcept {
  return large_->release_due_with(held_in_front + (arena_slabs_ ? arena_slabs_->free_bytes_kept() : 0));
}

void TieredAllocator::hand_in_kept_blocks() noexcept {
  if (arena_slabs_) {
    // Every thread's magazines first: a thread that stopped allocating keeps a slab partly full (and
    // the arena's chunk under it mapped) with a few blocks in its magazine.
    arena_slabs_->flush_every_thread();
    arena_slabs_->release_empty_slabs();
  }
  large_->hand_in_kept_blocks();
}

std::size_t TieredAllocator::release_cached() noexcept {
  return small_->release_cached() + large_->release_cached();
}

AllocatorStats TieredAllocator::stats() const noexcept {
  const AllocatorStats a = small_->stats();
  const AllocatorStats b = large_->stats();
  AllocatorStats s;
  s.allocations = a.allocations + b.allocations;
  s.deallocations = a.deallocations + b.deallocations;
  s.failed_allocations = a.failed_allocations + b.failed_allocations;
  s.bytes_in_use = a.bytes_in_use + b.bytes_in_use;
  s.peak_bytes_in_use = a.peak_bytes_in_use + b.peak_bytes_in_use;
  s.bytes_reserved = a.bytes_reserved + b.bytes_reserved;
  s.peak_bytes_reserved = a.peak_bytes_reserved + b.peak_bytes_reserved;
  s.bytes_cached = a.bytes_cached + b.bytes_cached;
  s.internal_waste = a.internal_waste + b.internal_waste;
  if (small_memory_) {
    // The arena counts the slabs as its live blocks: take them out once. Its peak in use counted the
    // slabs whole, so it bounds the true peak from above; its peak reserved is the process's own.
    const std::uint64_t slab_blocks_taken = small_memory_->blocks_taken();
    const std::uint64_t slab_blocks_returned = small_memory_->blocks_returned();
    s.allocations -= std::min(s.allocations, slab_blocks_taken);
    s.deallocations -= std::min(s.deallocations, slab_blocks_returned);
    s.bytes_in_use -= std::min<std::uint64_t>(s.bytes_in_use, a.bytes_reserved);
    s.peak_bytes_in_use = std::max(b.peak_bytes_in_use, s.bytes_in_use);
    s.bytes_reserved = b.bytes_reserved;
    s.peak_bytes_reserved = b.peak_bytes_reserved;
  }
  // Each tier only serves its own sizes, so the largest block any request could get without growing
  // is the large tier's, unless it has none.
  s.largest_free_block = std::max(a.largest_free_block, b.largest_free_block);
  return s;
}

std::unique_ptr<Allocator> make_tiered_allocator(MemoryProvider& provider, const Settings& settings) {
  const std::size_t slab_max =
      settings.slab_max_size != 0 ? static_cast<std::size_t>(settings.slab_max_size) : kDefaultSlabMaxSize;
  const std::size_t split =
      std::min<std::size_t>(settings.tiered_split != 0 ? settings.tiered_split : kDefaultTieredSplit, kSlabMaxSizeLimit);
  auto large = make_vmm_arena(provider, settings);
  auto small_memory = std::make_unique<BlockMemoryProvider>(*large);
  auto small = std::make_unique<SlabAllocator>(*small_memory, std::max(slab_max, split), /*thread_caches=*/true,
                                               kTieredSlabIdleBytes, kTieredSlabBytes, kTieredSlabMinBlocks);
  return std::make_unique<TieredAllocator>(std::move(large), std::move(small_memory), std::move(small), split);
}

}  // namespace gpushim
