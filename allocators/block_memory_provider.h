// A MemoryProvider whose "mappings" are blocks of another allocator: tiered's slab takes its slabs from
// tiered's own arena through it, so small and large blocks share one pool of mapped memory.
//
// Why: with slabs mapped from the driver, each size class in use holds at least one 2 MiB granule (the
// smallest unit the driver maps), ~22 classes on an LLM decoding loop: 44 MiB for a few hundred KiB of
// small blocks, mapped again right after tiered gave them back before its arena grew past its peak, so
// they sat on top of that peak. As arena blocks, slabs can be as small as a class needs
// (kTieredSlabBytes), come from the arena's free holes, and go back without a driver call. Measured with
// `gpushim trace replay --thread-caches` on traces recorded on the H200 (docs/perf-notes.md, "Slabs
// carved from the arena").
//
// reserve() hands out a block that is already backed; map() and unmap() only count; the allocator must
// outlive every slab taken from it. Not for the arena's own growth: the arena's provider stays the driver.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "allocators/allocator.h"
#include "providers/memory_provider.h"

namespace gpushim {

class BlockMemoryProvider final : public MemoryProvider {
 public:
  explicit BlockMemoryProvider(Allocator& source) noexcept : source_(source) {}

  // Blocks are multiples of the allocators' alignment; finer sizes would not be aligned blocks.
  std::size_t granularity() const noexcept override { return kMinAlignment; }
  void* reserve(std::size_t bytes) noexcept override {
    void* p = source_.allocate(bytes, kNoStream);
    if (p != nullptr) blocks_taken_.fetch_add(1, std::memory_order_relaxed);
    return p;
  }
  void release_reservation(void* base, std::size_t bytes) noexcept override {
    source_.deallocate(base, bytes, kNoStream);
    blocks_returned_.fetch_add(1, std::memory_order_relaxed);
  }
  bool map(void*, std::size_t bytes) noexcept override {
    bytes_mapped_.fetch_add(bytes, std::memory_order_relaxed);
    return true;
  }
  void unmap(void*, std::size_t bytes) noexcept override {
    bytes_mapped_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  std::size_t bytes_mapped() const noexcept override { return bytes_mapped_.load(std::memory_order_relaxed); }

  // The source's allocation counts include these blocks; a composite's stats take them out.
  std::uint64_t blocks_taken() const noexcept { return blocks_taken_.load(std::memory_order_relaxed); }
  std::uint64_t blocks_returned() const noexcept { return blocks_returned_.load(std::memory_order_relaxed); }

 private:
  static constexpr StreamHandle kNoStream = 0;
  Allocator& source_;
  std::atomic<std::size_t> bytes_mapped_{0};
  std::atomic<std::uint64_t> blocks_taken_{0};
  std::atomic<std::uint64_t> blocks_returned_{0};
};

}  // namespace gpushim
