// Fenced blocks back to the thread that freed them (router/returned_blocks.h).
#include "router/returned_blocks.h"

#include <algorithm>
#include <mutex>

#include "router/thread_state.h"

namespace gpushim::router {

void ThreadBlockOwners::return_to_owners(std::vector<FreedBlock>& blocks) noexcept {
  ThreadState* const self = t_state;  // the poller's own blocks go to its cache through the caller
  std::lock_guard<std::mutex> registry(g_threads_lock);
  const std::vector<ThreadState*>& live = threads();
  std::size_t kept = 0;
  std::size_t i = 0;
  while (i < blocks.size()) {
    // One run of blocks of one owner at a time: a merged batch holds each freeing thread's blocks in a
    // row, so the owner's lock is taken once per run.
    ThreadState* const owner = static_cast<ThreadState*>(blocks[i].owner);
    std::size_t end = i + 1;
    while (end < blocks.size() && blocks[end].owner == blocks[i].owner) ++end;
    // Only a registered thread: the pointer of one that exited names freed memory (or, recycled, another
    // live thread, which may take the blocks as well as any).
    const bool to_owner = owner && owner != self && std::find(live.begin(), live.end(), owner) != live.end();
    bool taken = false;
    if (to_owner) {
      std::lock_guard<SpinLock> guard(owner->lock);
      std::vector<FreedBlock>& list = owner->returned[ordinal_];
      try {
        list.insert(list.end(), blocks.begin() + static_cast<std::ptrdiff_t>(i),
                    blocks.begin() + static_cast<std::ptrdiff_t>(end));
        taken = true;
      } catch (...) {
        // No host memory: these go to the backend from here.
      }
      if (taken) {
        for (std::size_t j = i; j < end; ++j) owner->returned_bytes[ordinal_] += blocks[j].bytes;
        owner->returned_devices.fetch_or(std::uint64_t{1} << ordinal_, std::memory_order_release);
      }
    }
    if (!taken)
      for (std::size_t j = i; j < end; ++j) blocks[kept++] = blocks[j];
    i = end;
  }
  blocks.resize(kept);
}

void take_returned_blocks(ThreadState& thread) noexcept {
  std::uint64_t devices = thread.returned_devices.exchange(0, std::memory_order_acq_rel);
  std::vector<FreedBlock> taken;
  while (devices) {
    const int d = __builtin_ctzll(devices);
    devices &= devices - 1;
    {
      std::lock_guard<SpinLock> guard(thread.lock);
      taken.swap(thread.returned[d]);
      thread.returned_bytes[d] = 0;
    }
    DeviceState* device = g_devices[d].load(std::memory_order_acquire);
    if (device)
      for (const FreedBlock& block : taken) device->backend().deallocate(block.ptr, block.bytes, block.stream);
    taken.clear();
  }
}

std::uint64_t take_all_returned_blocks(DeviceState& device) noexcept {
  const int d = device.ordinal;
  std::vector<FreedBlock> taken;
  {
    std::lock_guard<std::mutex> registry(g_threads_lock);
    for (ThreadState* thread : threads()) {
      std::lock_guard<SpinLock> guard(thread->lock);
      std::vector<FreedBlock>& list = thread->returned[d];
      if (list.empty()) continue;
      try {
        taken.insert(taken.end(), list.begin(), list.end());
      } catch (...) {
        continue;  // no host memory: they stay with their owner
      }
      list.clear();
      thread->returned_bytes[d] = 0;
      // Its bit may stay set: the owner's next allocation then finds the list empty, which is harmless.
    }
  }
  std::uint64_t bytes = 0;
  for (const FreedBlock& block : taken) {
    device.backend().deallocate(block.ptr, block.bytes, block.stream);
    bytes += block.bytes;
  }
  return bytes;
}

std::uint64_t thread_returned_bytes(int ordinal) noexcept {
  std::uint64_t bytes = 0;
  std::lock_guard<std::mutex> registry(g_threads_lock);
  for (ThreadState* thread : threads()) {
    std::lock_guard<SpinLock> guard(thread->lock);
    bytes += thread->returned_bytes[ordinal];
  }
  return bytes;
}

bool returned_holds(int ordinal, const void* p) noexcept {
  std::lock_guard<std::mutex> registry(g_threads_lock);
  for (ThreadState* thread : threads()) {
    std::lock_guard<SpinLock> guard(thread->lock);
    for (const FreedBlock& block : thread->returned[ordinal])
      if (block.ptr == p) return true;
  }
  return false;
}

}  // namespace gpushim::router
