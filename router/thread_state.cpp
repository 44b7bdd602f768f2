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

namespace {

// Moves `thread`'s open batch of `device`, then each of its marked batches, out to `keep(blocks,
// context)`, `context` being what the batch would be fenced in (its lock held: for_each_thread). `keep`
// moves the blocks on, or throws (no host memory) with them untouched: then they become orphans of the
// device, the way back that needs none.
template <typename Keep>
void take_held_batches(ThreadState& thread, DeviceState& device, Keep keep) noexcept {
  const auto take = [&](std::vector<FreedBlock>& blocks, FenceContext context) {
    try {
      keep(blocks, context);
    } catch (...) {
      device.fences.adopt_orphans(std::move(blocks));
    }
  };
  PendingBatch& batch = thread.batches[device.ordinal];
  if (!batch.empty()) {
    const FenceContext context = batch.context();
    std::vector<FreedBlock> blocks = batch.take();
    take(blocks, context);
  }
  if (!thread.may_have_marked(device.ordinal)) return;
  for (MarkedBatch& marked : take_marked_batches(thread, device)) take(marked.blocks, marked.context);
}

}  // namespace

void close_all_thread_batches(DeviceState& device) noexcept {
  struct Closed {
    std::vector<FreedBlock> blocks;
    FenceContext context;
  };
  std::vector<Closed> closed;
  // Marked batches too: a fence is what synchronize_all can wait for.
  for_each_thread([&](ThreadState& thread) {
    take_held_batches(thread, device, [&](std::vector<FreedBlock>& blocks, FenceContext context) {
      closed.push_back({{}, context});  // the slot first: a move into it cannot fail
      closed.back().blocks = std::move(blocks);
    });
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
  // Marked batches are cuMemFree'd blocks held back like the rest: unfenced now, whatever their marks.
  // Moved: under these locks no block is copied, and a push_back that throws leaves its argument as it was.
  for_each_thread([&](ThreadState& thread) {
    take_held_batches(thread, device,
                      [&](std::vector<FreedBlock>& blocks, FenceContext) { taken.push_back(std::move(blocks)); });
  });
  return taken;
}

std::uint64_t thread_open_batch_bytes(int ordinal) noexcept {
  std::uint64_t bytes = 0;
  for_each_thread([&](ThreadState& thread) { bytes += thread.batches[ordinal].bytes(); });
  return bytes;
}

}  // namespace gpushim::router
