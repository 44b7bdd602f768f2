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

void close_all_thread_batches(DeviceState& device) noexcept {
  struct Closed {
    std::vector<FreedBlock> blocks;
    FenceContext context;
  };
  std::vector<Closed> closed;
  for_each_thread([&](ThreadState& thread) {
    PendingBatch& batch = thread.batches[device.ordinal];
    if (!batch.empty()) {
      FenceContext context = batch.context();
      try {
        closed.push_back({{}, context});
        closed.back().blocks = batch.take();
      } catch (...) {
      }
    }
    // Marked batches too: a fence is what synchronize_all can wait for.
    if (!thread.may_have_marked(device.ordinal)) return;
    for (MarkedBatch& marked : take_marked_batches(thread, device)) {
      try {
        closed.push_back({{}, marked.context});
        closed.back().blocks = std::move(marked.blocks);
      } catch (...) {
        device.fences.adopt_orphans(std::move(marked.blocks));
      }
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
    std::lock_guard<SpinLock> guard(thread->lock);
    PendingBatch& batch = thread->batches[device.ordinal];
    if (batch.empty()) return;
    context = batch.context();
    blocks = batch.take();
  }
  if (!hold_marked_batch(*thread, device, blocks, context)) device.fences.close_device_batch(std::move(blocks), context);
}

std::vector<std::vector<FreedBlock>> take_all_thread_batches(DeviceState& device) noexcept {
  std::vector<std::vector<FreedBlock>> taken;
  const auto take = [&](std::vector<FreedBlock> blocks) {  // moved: under these locks no block is copied
    try {
      taken.push_back(std::move(blocks));
    } catch (...) {
      device.fences.adopt_orphans(std::move(blocks));  // no host memory: the same way back, as orphans
    }
  };
  for_each_thread([&](ThreadState& thread) {
    PendingBatch& batch = thread.batches[device.ordinal];
    if (!batch.empty()) take(batch.take());
    // Marked batches are cuMemFree'd blocks held back like the rest: unfenced now, whatever their marks.
    if (!thread.may_have_marked(device.ordinal)) return;
    for (MarkedBatch& marked : take_marked_batches(thread, device)) take(std::move(marked.blocks));
  });
  return taken;
}

std::uint64_t thread_pending_bytes(int ordinal) noexcept {
  std::uint64_t bytes = 0;
  for_each_thread([&](ThreadState& thread) {
    bytes += thread.batches[ordinal].bytes();
    for (const MarkedBatch& batch : thread.marked[ordinal]) bytes += batch.bytes;
  });
  return bytes;
}

}  // namespace gpushim::router
