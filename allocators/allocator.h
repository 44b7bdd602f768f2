// The one interface every gpushim backend implements (RMM's device_memory_resource, reduced).
//
// A backend is a policy: how to carve device memory into blocks. It knows nothing of CUDA error codes,
// contexts or free-safety — the router (router/) owns those — so the same code runs on the GPU and,
// over host memory, in CPU tests and in `gpushim trace replay`.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace gpushim {

// An opaque CUstream. 0 is the legacy default stream. Backends that are not stream-ordered ignore it.
using StreamHandle = std::uintptr_t;

// Every block is aligned as cudaMalloc's are in practice, not just as documented (256 B): to the
// device's texture alignment (CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT, 512 B on the H100 and H200), so a
// texture or surface object can be made over any block. Measured on the H200: cudaCreateTextureObject
// over a linear block at 256 mod 512 answers cudaErrorInvalidValue. Every backend over a provider
// meets this; the router checks each device's attribute against it (allocators/block_alignment.h).
inline constexpr std::size_t kMinAlignment = 512;

struct AllocatorStats {
  std::uint64_t allocations = 0;
  std::uint64_t deallocations = 0;
  std::uint64_t failed_allocations = 0;
  std::uint64_t bytes_in_use = 0;        // sum of the requested sizes of live blocks
  std::uint64_t peak_bytes_in_use = 0;
  std::uint64_t bytes_reserved = 0;      // physical memory held from the provider (or the driver)
  std::uint64_t peak_bytes_reserved = 0;
  std::uint64_t bytes_cached = 0;        // reserved and not inside any live block: free for reuse
  std::uint64_t largest_free_block = 0;  // largest request that would succeed without growing
  std::uint64_t internal_waste = 0;      // block size minus requested size, summed over live blocks
  // Host spill (allocators/spilling_allocator.h; 0 without it). The fields above that describe memory
  // (reserved, cached, largest free) are the device's alone, so cuMemGetInfo stays about the device.
  std::uint64_t spilled_allocations = 0;   // blocks served from host memory so far
  std::uint64_t bytes_spilled = 0;         // requested sizes of live blocks in host memory
  std::uint64_t peak_bytes_spilled = 0;
  std::uint64_t spill_reserved = 0;        // host memory mapped for the device
  std::uint64_t peak_spill_reserved = 0;
};

// One block of a deallocate_batch call: deallocate()'s arguments.
struct BlockToFree {
  void* p;
  std::size_t bytes;
  StreamHandle stream;
};

// Blocks handed to a backend in one deallocate_batch call at most: one hold of an arena's lock frees at
// most this many (each a merge and a hash removal, well under a microsecond), so the allocations queued
// behind it wait microseconds, not the whole hand-back. Also the size of a batch kept on the stack.
inline constexpr std::size_t kBlocksPerBatchCall = 32;

class Allocator {
 public:
  virtual ~Allocator() = default;

  // Short lowercase name, as GPUSHIM_BACKEND spells it ("vmm", "slab", ...).
  virtual const char* name() const noexcept = 0;

  // Returns a block of at least `bytes` (> 0) bytes aligned to kMinAlignment, or nullptr when the
  // backend cannot get the memory. Never throws. Thread-safe.
  virtual void* allocate(std::size_t bytes, StreamHandle stream) noexcept = 0;

  // `p` came from allocate() on this backend with the same `bytes`. The router has validated it and
  // has made sure no GPU work can still touch the block, unless the backend is stream-ordered.
  virtual void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept = 0;

  // deallocate() of each of `count` blocks; `blocks` may be reordered or overwritten. A backend with
  // one lock takes it once for all of them: the fence queue gives back tens to hundreds of blocks at a
  // time (router/free_fence_queue.h), and block by block each took the arena's lock, where 16 threads'
  // allocations met them (38% of their wall-clock time at 16 MiB with a stream each on the H200,
  // docs/perf-notes.md, thirty-seventh session). Layers in front forward the blocks they do not keep.
  virtual void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept {
    for (std::size_t i = 0; i < count; ++i) deallocate(blocks[i].p, blocks[i].bytes, blocks[i].stream);
  }

  // Like allocate(), but nullptr where the backend would take more memory from the provider or driver
  // for a request that blocks given back to it might serve instead. A cache in front of the backend
  // asks this before it gives back the blocks it keeps (allocators/thread_cache_allocator.h), so that
  // keeping them never makes the backend grow. Only where can_allocate_without_growing().
  virtual void* allocate_without_growing(std::size_t, StreamHandle) noexcept { return nullptr; }
  // True where the memory of a freed block stays with the backend and serves later requests of any
  // size (an arena): then a cache may keep freed blocks of any size in front of it, asking
  // allocate_without_growing() first, without holding memory the backend would have given back.
  // False where a freed block's memory goes back at once (the slab's dedicated runs) or serves only
  // its own size class.
  virtual bool can_allocate_without_growing() const noexcept { return false; }
  // The count of calls that found the backend's one lock held by another thread (relaxed), or nullptr
  // where there is no such lock. It lives as long as the backend, so a cache in front fetches it once
  // and reads it without a call; it keeps freed large blocks per thread only while the count moves
  // (allocators/thread_cache_allocator.h): that is when they spare threads a wait.
  virtual const std::atomic<std::uint64_t>* lock_wait_counter() const noexcept { return nullptr; }

  // The last resort, once allocate() failed and the router has got back what it could: a block from
  // memory outside the device (host memory, GPUSHIM_SPILL=host), or nullptr. Only the spilling
  // allocator and the decorators that wrap it have one.
  virtual void* allocate_spilled(std::size_t, StreamHandle) noexcept { return nullptr; }

  // Gives memory that holds no live block back to the provider/driver. Returns the bytes given back.
  virtual std::size_t release_cached() noexcept = 0;
  // Gives back the memory that stayed idle past the backend's release delay (a VmmArena's, above its
  // threshold), where there is any. The arena checks that at its own frees; the router also calls this
  // every few thousand frees (router.cpp), so the memory goes back where frees stop reaching the arena
  // (a program that moved on to blocks the thread caches or the slabs serve). Cheap when nothing is due;
  // never waits for a lock.
  virtual void release_idle() noexcept {}
  // Whether memory idle in the backend is due to go back (release_idle) once the free blocks kept in
  // front of it, where its release cannot see them, are in it too: `held_in_front` bytes the caller
  // keeps (the router's returned lists) and what this layer and those under it keep (the thread caches'
  // blocks, the tiered slab's empty slabs); due when together they are above its release threshold and
  // its release delay passed. A true answer costs the keepers their blocks (hand_in_kept_blocks), so
  // the arena gives it at most once a delay. False where there is no such rule, or the arena's lock is
  // held (a thread is using it: the next synchronization asks again). Never waits for a lock. Layers
  // that keep blocks add theirs; decorators forward it.
  virtual bool release_due_with(std::uint64_t /*held_in_front*/) noexcept { return false; }
  // After release_due_with answered true (router::after_context_synchronize): each layer gives the free
  // blocks it keeps to the layer under it, outermost first, so that the release that follows sees them.
  // Decorators forward it.
  virtual void hand_in_kept_blocks() noexcept {}

  virtual AllocatorStats stats() const noexcept = 0;

  // True when a freed block can be handed out again at once, so the router must hold freed blocks
  // back until GPU work issued before the free has finished. False for backends whose own free
  // already orders itself against the GPU (passthrough: cuMemFree synchronizes).
  virtual bool needs_free_fence() const noexcept { return true; }
};

}  // namespace gpushim
