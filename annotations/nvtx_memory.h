// Tells compute-sanitizer (and any NVTX tool) where gpushim's heaps and blocks are, through the NVTX
// memory API (nvtx3/nvToolsExtMem.h): each mapped range is a sub-allocator heap, each live block a
// region of its requested size. memcheck then reports an access to a heap byte that no live block
// covers (past a block's end, into a freed block), which it cannot see otherwise: to the driver the
// whole mapped range is one valid allocation.
//
// A heap is a *mapped* range (one provider map(), i.e. one cuMemMap), not the reservation: the tool
// accepts a heap only over an allocation it already tracks ("any allocation created with cudaMalloc
// can be registered as a memory pool", NVTX API for Compute Sanitizer, Pools Management), and it
// tracks a VMM range from its cuMemMap to its cuMemUnmap. Address space that is only reserved is no
// allocation, so a heap over the whole reservation, registered before anything was mapped, was
// silently ignored and no block was ever checked. A block that straddles two mappings is registered
// as one region per heap it touches.
//
// Cost with no tool attached: the first map() asks NVTX once (NVTX loads no library without
// NVTX_INJECTION64_PATH); from then on every function here is one atomic load and a branch. With a
// tool attached the heap and block tables take a lock (the tool itself costs far more).
//
// Call only once the driver has a context (compute-sanitizer needs CUDA initialized before NVTX calls,
// and its extension initialization is attempted once per process); map() is always after that.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace gpushim::annotations {

// `size` bytes at `base` were just mapped and made accessible (after cuMemMap + cuMemSetAccess).
void on_memory_mapped(std::uintptr_t base, std::size_t size, int device) noexcept;
// The range mapped at `base` is about to be unmapped (before cuMemUnmap); its blocks go with it.
void on_memory_unmapping(std::uintptr_t base) noexcept;

// A block handed to the program: `size` is what it asked for (not the rounded size), so one byte past
// it is already an error. Ignored for pointers outside every heap (passthrough blocks are the
// driver's own allocations, which the tools know already).
// Inline, as on_block_freed: every allocate and free passes here, and with no tool attached a call was
// ~15 instructions a pair for one load and a branch.
namespace detail {
// Set at the first map when a tool took the extension. Hidden: -fPIC code reads it directly, not
// through the GOT (router/router_state.h says the same of the router's globals).
extern std::atomic<bool> g_tool_takes_blocks __attribute__((visibility("hidden")));
void register_block(std::uintptr_t ptr, std::size_t size) noexcept;
void unregister_block(std::uintptr_t ptr) noexcept;
}  // namespace detail
inline void on_block_allocated(std::uintptr_t ptr, std::size_t size) noexcept {
  if (detail::g_tool_takes_blocks.load(std::memory_order_acquire)) detail::register_block(ptr, size);
}
// The program freed the block (call at the program's free, not when the free fence lets it be reused).
inline void on_block_freed(std::uintptr_t ptr) noexcept {
  if (detail::g_tool_takes_blocks.load(std::memory_order_acquire)) detail::unregister_block(ptr);
}

// True when an NVTX tool is attached: the memory extension was taken by a tool (decided at the first
// map), or the core API was (decided by the first range or domain use).
bool tool_attached() noexcept;

// The bookkeeping behind the functions above, exposed for CPU tests: heaps by address range, kept
// sorted by base (heaps never overlap: they are distinct mappings).
class HeapTable {
 public:
  // One heap per mapping: at 2 MiB per mapping that is 16 GiB of small mappings; arenas map in far
  // larger steps. A mapping beyond this is simply not checked (never a false report).
  static constexpr int kMaxHeaps = 8192;
  bool add(std::uintptr_t base, std::size_t size, void* handle) noexcept;
  // The heap containing all of [ptr, ptr + size), or nullptr.
  void* find(std::uintptr_t ptr, std::size_t size) const noexcept;
  // The heap containing the byte at `address`, or nullptr; its end goes to *end.
  void* find_containing(std::uintptr_t address, std::uintptr_t* end) const noexcept;
  void* remove(std::uintptr_t base) noexcept;  // the removed heap's handle, or nullptr
  int count() const noexcept { return count_; }

 private:
  struct Heap {
    std::uintptr_t base;
    std::size_t size;
    void* handle;
  };
  int index_containing(std::uintptr_t address) const noexcept;  // -1 if none
  Heap heaps_[kMaxHeaps] = {};
  int count_ = 0;
};

}  // namespace gpushim::annotations
