// Fenced blocks back to the thread that freed them (BlockOwners, router/free_fence_queue.h).
//
// Once a stream exists every cuMemFree is fenced, and its block comes back when some thread polls the
// fences. Given back by the polling thread, it landed in that thread's cache
// (allocators/thread_cache_allocator.h): the freeing thread's own cache ran dry, and with many threads
// every allocation missed into the backend's shared locks. So the poller hands each block to its
// freeing thread's returned list (ThreadState::returned, under that thread's lock), and that thread's
// next allocations of the same block size take from the list, newest first: no backend call, no lock
// but its own. The first allocation of a size the list does not hold (among its newest
// kReturnedSearch) gives the whole list to the backend: the thread has moved on to other sizes.
// Not through the thread's cache: its bounds (2 MiB a class) hold a fraction of one batch from 64 KiB
// up (a batch closes at 256 blocks or 64 MiB), and the rest missed into the backend again.
//
// A returned block is free memory the backend does not see yet, so it counts as held back
// (out_of_memory.cpp's pending_bytes) and the pressure paths take every thread's list first; and a
// context synchronization gives every list to the backend once its release is due counting them
// (router.cpp, gather_idle_blocks): a thread that stopped allocating would keep its list for good. A list
// holds at most kMaxReturnedBytes per device, or one run of any size when it was empty (more goes to the
// backend from the poller: a thread that frees but no longer allocates keeps little). And a list keeps
// only what its owner uses: half of the bytes it held through a whole round of its owner's takes (from
// one give-back to the next) stay out of the next give-back, for the backend. Held, they were memory
// no other allocation found but at the peak, and 16 threads' lists each filled to the cap. The poller's own
// blocks go to its own list too: all of them once other threads' blocks are in the round, and those
// above the thread cache's classes always (BlockOwners says why).
// A thread that exits re-adopts its list as orphans of the fence queue (no backend or driver call from
// a thread's exit): fenced once more, then given to the backend. A block whose owner has exited goes
// to the backend from the poller, as before.
//
// While a thread's list holds blocks, its frees that may be reused at once (the work was ordered when it
// freed) join the list too (keep_freed_block), within the same cap, until a run of
// kAtOnceRunThatEndsKeeping of them (router/thread_state.h) says the thread's work stays ordered. Given
// to the backend, they went through the thread's cache, whose class bounds (2 blocks of 1 MiB)
// overflowed into the arena's lock at nearly every free, because the thread's allocations took from the
// list and its frees filled the cache; the thread's working set drained into the arena, and the other
// threads' misses then queued for it there (wall-clock profile of 16 threads with a stream each on the
// H200, eleventh session: a quarter of the arena's lock waits at 1 MiB were such frees).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "router/free_fence_queue.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

struct DeviceState;
struct ThreadState;

// The fence queue's BlockOwners for one device: returns blocks to the threads that freed them.
class ThreadBlockOwners final : public BlockOwners {
 public:
  explicit ThreadBlockOwners(int ordinal) noexcept : ordinal_(ordinal) {}
  bool freed_by_caller(const std::vector<FreedBlock>& blocks) const noexcept override;
  void return_to_owners(std::vector<FreedBlock>* const* parts, std::size_t count,
                        std::size_t own_kept_bytes) noexcept override;

 private:
  const int ordinal_;
};

// How far back from the newest a lookup searches, and the most bytes a thread's list holds per device:
// two batches' worth.
inline constexpr std::size_t kReturnedSearch = 16;
inline constexpr std::uint64_t kMaxReturnedBytes = 2 * kBatchMaxBytes;

// A returned block of exactly `block_size` from the calling thread's list for `device`, or nullptr (then
// the list has gone to the backend). The slow half of the check in the allocation path
// (ThreadState::returned_devices).
void* take_returned_block(ThreadState& thread, DeviceState& device, std::size_t block_size) noexcept;
// A returned block of exactly `block_size` from the fullest thread's list for `device` that has one
// (among its newest kReturnedSearch), or nullptr; the other blocks stay where they are. An allocation
// at the peak asks this before it takes every list (below): that gave every block of 16 threads to the
// backend (then one arena lock each; 32 a lock since), and the owners' next allocations then missed into
// that lock too (16 threads with a stream each on the H200: 10% of their wall-clock time at 4 MiB).
void* take_one_returned_block(DeviceState& device, std::size_t block_size) noexcept;
// Every thread's returned blocks of `device` into its backend, from the calling thread (memory pressure:
// the waiting allocation must find them there). Returns the bytes.
std::uint64_t take_all_returned_blocks(DeviceState& device) noexcept;
// Puts `block`, freed by the calling thread `thread` and free for reuse at once, on its returned list
// for `device` when that list holds blocks already and has room, and the thread's run of such frees is
// short of kAtOnceRunThatEndsKeeping (router/thread_state.h); false when not (the caller gives it to the
// backend). The slow half of a check in the free path (ThreadState::returned_devices).
bool keep_freed_block(ThreadState& thread, DeviceState& device, const FreedBlock& block) noexcept;
// Bytes waiting in the threads' returned lists of device `ordinal`.
std::uint64_t thread_returned_bytes(int ordinal) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
