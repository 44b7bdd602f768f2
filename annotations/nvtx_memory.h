// Tells compute-sanitizer (and any NVTX tool) where gpushim's heaps and blocks are, through the NVTX
// memory API (nvtx3/nvToolsExtMem.h): each reserved range is a sub-allocator heap, each live block a
// region of its requested size. memcheck then reports an access to a heap byte that no live block
// covers (past a block's end, into a freed block), which it cannot see otherwise: to the driver the
// whole mapped range is one valid allocation.
//
// Cost with no tool attached: NVTX reports "no tool" on the first call (the domain handle is null);
// from then on every function here is one relaxed atomic load and a branch. With a tool attached the
// heap lookup takes a lock (the tool itself costs far more).
//
// Call only once the driver has a context (compute-sanitizer needs CUDA initialized before NVTX calls);
// the first reservation is always after that.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gpushim::annotations {

// A range of address space from which blocks will be carved (the arena's reservation).
void on_heap_reserved(std::uintptr_t base, std::size_t size, int device) noexcept;
// Before the range is given back (cuMemAddressFree); its blocks are forgotten with it.
void on_heap_released(std::uintptr_t base) noexcept;

// A block handed to the program: `size` is what it asked for (not the rounded size), so one byte past
// it is already an error. Ignored for pointers outside every heap (passthrough blocks are the
// driver's own allocations, which the tools know already).
void on_block_allocated(std::uintptr_t ptr, std::size_t size) noexcept;
// The program freed the block (call at the program's free, not when the free fence lets it be reused).
void on_block_freed(std::uintptr_t ptr) noexcept;

// True when an NVTX tool is attached (decided by the first call to any annotation).
bool tool_attached() noexcept;

// The bookkeeping behind the functions above, exposed for CPU tests: heaps by address range.
class HeapTable {
 public:
  static constexpr int kMaxHeaps = 256;  // a reservation per device per backend; far more than enough
  bool add(std::uintptr_t base, std::size_t size, void* handle) noexcept;
  // The heap containing [ptr, ptr + size), or nullptr.
  void* find(std::uintptr_t ptr, std::size_t size) const noexcept;
  void* remove(std::uintptr_t base) noexcept;  // the removed heap's handle, or nullptr
  int count() const noexcept { return count_; }

 private:
  struct Heap {
    std::uintptr_t base;
    std::size_t size;
    void* handle;
  };
  Heap heaps_[kMaxHeaps] = {};
  int count_ = 0;
};

}  // namespace gpushim::annotations
