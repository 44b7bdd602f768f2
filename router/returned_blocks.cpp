// Fenced blocks back to the thread that freed them (router/returned_blocks.h).
#include "router/returned_blocks.h"

#include <algorithm>
#include <mutex>

#include "router/block_hand_back.h"
#include "router/marked_batches.h"
#include "router/thread_state.h"

namespace gpushim::router {

namespace {

// Which lists take a run (append_to_list).
enum class ListTakes {
  if_not_empty,  // an ordered free joins a list only while the thread allocates from it
  // A poller's give-back: an empty list takes the run whatever its size (one block of 1 GiB is over the
  // cap, and its thread allocates it again next); a list that holds blocks, within the cap.
  if_empty_or_room,
  // The rest of a run that an empty list took, where the run goes on into the next part: past the cap
  // too. A batch comes in parts (the batches merged into it), and blocks of one owner in a row across
  // parts are one run, as they were in one vector before the parts: taken one part at a time, the parts
  // after the first went to the backend, and the next allocations of that size to the arena (one
  // thread with a stream on the H200, 256 MiB-1 GiB: p99 1.1 -> 1.5 us, back to 1.1-1.3 us with this;
  // seventeenth session).
  any,
};

// The first blocks of a give-back's run that go to the backend instead of `owner`'s list for device `d`
// (owner's lock held): half of the bytes the list kept through the whole round since the last give-back
// in which its owner took a block. Its owner did not need them; kept, they were memory no other
// thread's allocation found but at the peak, and in the backend they serve the next allocation that
// would grow. Without this a list filled to its cap and stayed there: 16 threads with a stream each
// held 16 x 128 MiB on the H200 after a few seconds at 64 KiB (2.2 GiB reserved against 0.6 GiB after
// 0.1 s; 0.4 GiB with this), and 2.7 GiB against 2.1 at 1 MiB (twenty-second session). The price is
// their pairs: the lists run dry more often, and their owners' allocations go to the backend's locks
// (64 KiB: 25-27 -> 15-18 M pairs/s; a reserve of half a round's takes kept in the list bought nothing).
// Half, not all: a list whose need varies keeps some. The run's blocks go, not the list's oldest: the
// owner's blocks are alike to it, and nothing is moved twice.
const FreedBlock* surplus_of(ThreadState& owner, int d, const FreedBlock* begin, const FreedBlock* end,
                             std::uint64_t* run_bytes) noexcept {
  std::uint64_t& low = owner.returned_low[d];
  if (low == ThreadState::kNoTakeSinceReturn) return begin;  // no take to judge by (a give-back in parts)
  std::uint64_t surplus = std::min(low, owner.returned_bytes[d]) / 2;
  low = ThreadState::kNoTakeSinceReturn;
  while (begin != end && begin->bytes <= surplus) {
    surplus -= begin->bytes;
    *run_bytes -= begin->bytes;
    ++begin;
  }
  return begin;
}

// Appends blocks[begin, end) of one owner, all freed by it, to `owner`'s list for device `d`, under its
// lock, as `takes` allows. Returns the first block appended: the ones before it (all of them, when
// `takes` does not allow it or there is no host memory) go to the backend from the caller. A give-back
// leaves the list's surplus out (surplus_of). `was_empty`: set to whether the list was empty before.
// Inlined: an ordered free is one of its callers, and the call cost ~15 instructions a free.
__attribute__((always_inline)) inline const FreedBlock* append_to_list(ThreadState& owner, int d,
                                                                       const FreedBlock* begin, const FreedBlock* end,
                                                                       ListTakes takes,
                                                                       bool* was_empty = nullptr) noexcept {
  std::uint64_t run_bytes = 0;
  for (const FreedBlock* b = begin; b != end; ++b) run_bytes += b->bytes;
  std::lock_guard<SpinLock> guard(owner.lock);
  std::vector<FreedBlock>& list = owner.returned[d];
  if (was_empty) *was_empty = list.empty();
  if (takes != ListTakes::if_not_empty) begin = surplus_of(owner, d, begin, end, &run_bytes);
  if (begin == end) return end;
  if (takes != ListTakes::any &&
      (list.empty() ? takes == ListTakes::if_not_empty : owner.returned_bytes[d] + run_bytes > kMaxReturnedBytes))
    return end;
  try {
    if (end - begin == 1) {
      list.push_back(*begin);  // an ordered free: the range insert cost ~60 instructions more (the CPU guard)
    } else {
      list.insert(list.end(), begin, end);
    }
  } catch (...) {
    return end;
  }
  owner.returned_bytes[d] += run_bytes;
  owner.mark_returned(d, true);
  return begin;
}

}  // namespace

bool ThreadBlockOwners::freed_by_caller(const std::vector<FreedBlock>& blocks) const noexcept {
  ThreadState* const self = t_state;
  return std::all_of(blocks.begin(), blocks.end(),
                     [self](const FreedBlock& block) { return block.owner == nullptr || block.owner == self; });
}

void ThreadBlockOwners::return_to_owners(std::vector<FreedBlock>* const* parts, std::size_t count,
                                         std::size_t own_kept_bytes) noexcept {
  ThreadState* const self = t_state;
  // Parts of the poller's own blocks need no registry lock: the poller is alive.
  bool only_mine = self != nullptr;
  for (std::size_t k = 0; k < count && only_mine; ++k) only_mine = freed_by_caller(*parts[k]);
  std::unique_lock<AdaptiveMutex> registry(g_threads_lock, std::defer_lock);
  if (!only_mine) registry.lock();
  auto is_live = [](ThreadState* thread) {  // registry held
    const std::vector<ThreadState*>& live = threads();
    return std::find(live.begin(), live.end(), thread) != live.end();
  };
  // The owner of the run before, and whether its list took it whole, from empty (ListTakes::any): a run
  // goes on across parts while the owner stays the same.
  ThreadState* run_owner = nullptr;
  bool run_past_cap = false;
  for (std::size_t k = 0; k < count; ++k) {
    std::vector<FreedBlock>& blocks = *parts[k];
    std::size_t kept = 0;
    std::size_t i = 0;
    while (i < blocks.size()) {
      // One run of blocks of one owner at a time: a thread's batch holds its own blocks in a row, so the
      // owner's lock is taken once per run.
      ThreadState* const owner = static_cast<ThreadState*>(blocks[i].owner);
      std::size_t end = i + 1;
      while (end < blocks.size() && blocks[end].owner == blocks[i].owner) ++end;
      // Only a registered thread: the pointer of one that exited names freed memory (or, recycled,
      // another live thread, which may take the blocks as well as any).
      const bool to_owner = owner && (owner == self || (!only_mine && is_live(owner)));
      // The caller's own small blocks stay, first in the run: they go to the backend (own_kept_bytes).
      std::size_t given = i;
      if (to_owner && owner == self && own_kept_bytes) {
        const auto run = blocks.begin() + static_cast<std::ptrdiff_t>(i);
        const auto is_small = [own_kept_bytes](const FreedBlock& block) { return block.bytes <= own_kept_bytes; };
        const auto small_end = std::partition(run, run + static_cast<std::ptrdiff_t>(end - i), is_small);
        given = static_cast<std::size_t>(small_end - blocks.begin());
      }
      const FreedBlock* const run_end = blocks.data() + end;
      const FreedBlock* appended_from = run_end;
      bool was_empty = false;
      const bool continues = owner == run_owner && run_past_cap;
      if (to_owner && given != end)
        appended_from = append_to_list(*owner, ordinal_, blocks.data() + given, run_end,
                                       continues ? ListTakes::any : ListTakes::if_empty_or_room, &was_empty);
      run_owner = owner;
      run_past_cap = appended_from != run_end && (was_empty || continues);
      // The blocks before the appended ones (the caller's small ones, the list's surplus, or the whole
      // run) stay for the backend.
      given = static_cast<std::size_t>(appended_from - blocks.data());
      for (std::size_t j = i; j < given; ++j) blocks[kept++] = blocks[j];
      i = end;
    }
    blocks.resize(kept);
  }
}

namespace {

// The index of the newest block of exactly `block_size` among the newest kReturnedSearch of `list`, or
// list.size() when there is none. The owner's lock held.
std::size_t newest_of_size(const std::vector<FreedBlock>& list, std::size_t block_size) noexcept {
  // The newest first: a loop that frees and asks for the same sizes finds its size at the end.
  const std::size_t oldest = list.size() > kReturnedSearch ? list.size() - kReturnedSearch : 0;
  for (std::size_t i = list.size(); i-- > oldest;)
    if (list[i].bytes == block_size) return i;
  return list.size();
}

// Takes a block of exactly `block_size` from `owner`'s list for device `d` (newest_of_size), or
// returns nullptr. The owner's lock held.
__attribute__((always_inline)) inline void* take_from_list(ThreadState& owner, int d, std::size_t block_size) noexcept {
  std::vector<FreedBlock>& list = owner.returned[d];
  const std::size_t i = newest_of_size(list, block_size);
  if (i == list.size()) return nullptr;
  void* p = list[i].ptr;
  owner.returned_bytes[d] -= block_size;
  owner.returned_low[d] = std::min(owner.returned_low[d], owner.returned_bytes[d]);
  list[i] = list.back();
  list.pop_back();
  if (list.empty()) owner.mark_returned(d, false);
  return p;
}

}  // namespace

void* take_returned_block(ThreadState& thread, DeviceState& device, std::size_t block_size) noexcept {
  const int d = device.ordinal;
  // A list that is dry, or holds no block of this size among its newest, first takes the blocks of the
  // thread's marked batches that have passed (router/marked_batches.h).
  if (!thread.may_have_returned(d) && (!thread.may_have_marked(d) || !return_passed_batches(thread, device)))
    return nullptr;
  std::vector<FreedBlock> flushed;
  {
    std::unique_lock<SpinLock> guard(thread.lock);
    void* p = take_from_list(thread, d, block_size);
    if (!p && thread.may_have_marked(d)) {
      guard.unlock();  // return_passed_batches takes it
      const bool refilled = return_passed_batches(thread, device);
      guard.lock();
      if (refilled) p = take_from_list(thread, d, block_size);
    }
    if (p) return p;
    // The thread asks for other sizes now: its returned blocks go to the backend, where anyone may use them
    // (in chunks, hand_to_backend: past the thread cache's large slots, which would keep sizes by exact
    // size for a thread that has stopped asking for them, as the fence queue's rounds go past them).
    flushed.swap(thread.returned[d]);
    thread.returned_bytes[d] = 0;
    thread.mark_returned(d, false);
  }
  hand_to_backend(device.backend(), flushed);
  return nullptr;
}

bool keep_freed_block(ThreadState& thread, DeviceState& device, const FreedBlock& block) noexcept {
  if (!thread.keeps_at_once_free()) return false;
  FreedBlock owned = block;
  owned.owner = &thread;
  return append_to_list(thread, device.ordinal, &owned, &owned + 1, ListTakes::if_not_empty) == &owned;
}

void* take_one_returned_block(DeviceState& device, std::size_t block_size) noexcept {
  const int d = device.ordinal;
  // From the fullest list that has the size: taken from a list of one, a block sent its owner's next
  // allocation to the peak in turn, and 16 threads passed the missing block round.
  std::lock_guard<AdaptiveMutex> registry(g_threads_lock);
  ThreadState* fullest = nullptr;
  std::uint64_t most = 0;
  for (ThreadState* thread : threads()) {
    // The bit is read without the owner's lock: a list that just got blocks is found by the next ask.
    if (!thread->may_have_returned(d)) continue;
    std::lock_guard<SpinLock> guard(thread->lock);
    const std::vector<FreedBlock>& list = thread->returned[d];
    if (thread->returned_bytes[d] <= most || newest_of_size(list, block_size) == list.size()) continue;
    fullest = thread;
    most = thread->returned_bytes[d];
  }
  // The walk holds the registry lock to its end: `fullest` cannot exit meanwhile (for_each_thread lets
  // it go after its walk, so it does not serve here).
  if (!fullest) return nullptr;
  std::lock_guard<SpinLock> guard(fullest->lock);  // its owner may have taken the block since
  return take_from_list(*fullest, d, block_size);
}

std::uint64_t take_all_returned_blocks(DeviceState& device) noexcept {
  const int d = device.ordinal;
  std::vector<FreedBlock> taken;
  for_each_thread([&](ThreadState& thread) {
    std::vector<FreedBlock>& list = thread.returned[d];
    if (list.empty()) return;
    try {
      taken.insert(taken.end(), list.begin(), list.end());
    } catch (...) {
      return;  // no host memory: they stay with their owner
    }
    list.clear();
    thread.returned_bytes[d] = 0;
    // Its bit may stay set: the owner's next allocation then finds the list empty, which is harmless.
  });
  std::uint64_t bytes = 0;
  for (const FreedBlock& block : taken) bytes += block.bytes;
  hand_to_backend(device.backend(), taken);
  return bytes;
}

std::uint64_t thread_returned_bytes(int ordinal) noexcept {
  std::uint64_t bytes = 0;
  for_each_thread([&](ThreadState& thread) { bytes += thread.returned_bytes[ordinal]; });
  return bytes;
}

}  // namespace gpushim::router
