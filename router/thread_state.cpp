// Per-thread state (router/thread_state.h): the registry of every thread's state, and the sweeps over it
// that memory pressure and cuMemGetInfo need.
#include "router/thread_state.h"

namespace gpushim::router {

Counters g_retired[kMaxDevices];
namespace {
// Before any request: the library's static initialisation runs before the program's first CUDA call.
[[maybe_unused]] const bool g_retired_shared = [] {
  for (Counters& counters : g_retired) counters.make_shared();
  return true;
}();
}  // namespace
AdaptiveMutex g_threads_lock;
std::vector<ThreadState*>& threads() {
  static auto* registered = new std::vector<ThreadState*>();
  return *registered;
}

void visit_pending_batches(int ordinal, PendingBatchVisitor visit, void* arg) noexcept {
  const std::uint64_t bit = std::uint64_t{1} << ordinal;
  ThreadState* const self = t_state;
  auto holds_blocks = [bit](const ThreadState* thread) {
    return (thread->batch_devices.load(std::memory_order_relaxed) & bit) != 0;
  };
  std::lock_guard<AdaptiveMutex> registry(g_threads_lock);
  // The other threads' locks: every one announced, one barrier for all of them, then each owner's
  // section that began before it waited for. The registry lock keeps any other sweep out meanwhile.
  bool announced = false;
  for (ThreadState* thread : threads()) {
    if (thread == self || !holds_blocks(thread)) continue;
    thread->batch_lock.remote_announce();
    thread->swept = true;
    announced = true;
  }
  if (announced) OwnerBiasedLock::remote_barrier();
  for (ThreadState* thread : threads()) {
    if (thread == self) {
      thread->batch_lock.owner_lock();
      if (holds_blocks(thread)) visit(thread->batches[ordinal], arg);
      thread->mark_batch(ordinal, !thread->batches[ordinal].empty());
      thread->batch_lock.owner_unlock();
    } else if (thread->swept) {
      thread->swept = false;
      thread->batch_lock.remote_wait();
      visit(thread->batches[ordinal], arg);
      thread->mark_batch(ordinal, !thread->batches[ordinal].empty());
      thread->batch_lock.remote_unlock();
    }
  }
}

void close_all_thread_batches(DeviceState& device) noexcept {
  struct Closed {
    std::vector<FreedBlock> blocks;
    FenceContext context;
  };
  std::vector<Closed> closed;
  for_each_pending_batch(device.ordinal, [&](PendingBatch& batch) {
    if (batch.empty()) return;
    FenceContext context = batch.context();
    try {
      closed.push_back({{}, context});
      closed.back().blocks = batch.take();
    } catch (...) {
    }
  });
  for (Closed& c : closed) device.fences.close_device_batch(std::move(c.blocks), c.context);
}

void close_this_thread_batch(DeviceState& device) noexcept {
  ThreadState* thread = t_state;
  if (!thread) return;
  std::vector<FreedBlock> blocks;
  FenceContext context = nullptr;
  {
    thread->batch_lock.owner_lock();
    PendingBatch& batch = thread->batches[device.ordinal];
    if (!batch.empty()) {
      context = batch.context();
      blocks = batch.take();
      thread->mark_batch(device.ordinal, false);
    }
    thread->batch_lock.owner_unlock();
  }
  if (blocks.empty()) return;
  device.fences.close_device_batch(std::move(blocks), context);
}

std::vector<std::vector<FreedBlock>> take_all_thread_batches(DeviceState& device) noexcept {
  std::vector<std::vector<FreedBlock>> taken;
  for_each_pending_batch(device.ordinal, [&](PendingBatch& batch) {
    if (batch.empty()) return;
    std::vector<FreedBlock> blocks = batch.take();  // moved: under these locks no block is copied
    try {
      taken.push_back(std::move(blocks));
    } catch (...) {
      device.fences.adopt_orphans(std::move(blocks));  // no host memory: the same way back, as orphans
    }
  });
  return taken;
}

std::uint64_t thread_pending_bytes(int ordinal) noexcept {
  std::uint64_t bytes = 0;
  for_each_pending_batch(ordinal, [&](PendingBatch& batch) { bytes += batch.bytes(); });
  return bytes;
}

}  // namespace gpushim::router
