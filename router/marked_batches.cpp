// Marked batches (router/marked_batches.h).
#include "router/marked_batches.h"

#include <mutex>
#include <utility>

#include "config/settings.h"
#include "router/block_hand_back.h"
#include "router/router_state.h"
#include "router/thread_state.h"

namespace gpushim::router {
namespace {

// Marked only where a fenced block may go back to its thread's list (a backend that orders its own
// frees keeps the queue) and GPUSHIM_THREAD_FENCES allows it. Asked at each close (settings() is read
// once per process).
bool marks_allowed(const DeviceState& device) noexcept {
  return device.properties.fenced && !device.properties.stream_ordered && !device.properties.driver_backed &&
         settings().thread_fences;
}

// `batches` (passed, moved out of their thread) to `device`'s owners, the calling thread among them,
// and what the lists do not take to the backend, as the fence queue's rounds go (router/block_hand_back.h).
void give_back_passed(DeviceState& device, std::vector<MarkedBatch>& batches) noexcept {
  std::uint64_t bytes = 0, blocks = 0;
  BlockHandBack hand_back(&device.owners, device.backend(), kOwnBlockThroughCacheBytes);
  for (MarkedBatch& batch : batches) {
    bytes += batch.bytes;
    blocks += batch.blocks.size();
    hand_back.offer_to_owners(batch.blocks);
  }
  hand_back.owners_done();
  device.marked_bytes.fetch_sub(bytes, std::memory_order_relaxed);
  device.marked_blocks_passed.fetch_add(blocks, std::memory_order_relaxed);
  for (const MarkedBatch& batch : batches) hand_back.to_backend(batch.blocks);
}

// Moves the passed batches of `thread`'s device `d` into `passed`, keeping the others in order, and
// clears its bit once none is left. Its lock held.
void move_passed(ThreadState& thread, int d, std::vector<MarkedBatch>& passed) noexcept {
  std::vector<MarkedBatch>& held = thread.marked[d];
  std::size_t kept = 0;
  for (std::size_t i = 0; i < held.size(); ++i) {
    if (held[i].passed()) {
      try {
        passed.push_back(std::move(held[i]));
        continue;
      } catch (...) {
        // no host memory: it stays, and a later check moves it
      }
    }
    if (kept != i) held[kept] = std::move(held[i]);
    ++kept;
  }
  held.resize(kept);
  if (held.empty()) thread.mark_marked(d, false);
}

}  // namespace

bool hold_marked_batch(ThreadState& thread, DeviceState& device, std::vector<FreedBlock>& blocks,
                       FenceContext context) noexcept {
  if (blocks.empty() || !marks_allowed(device)) return false;
  MarkedBatch batch;
  // After the batch's last free: every submission that may have used one of its blocks has begun.
  if (!mark_active_streams(&batch.marks)) return false;
  for (const FreedBlock& block : blocks) batch.bytes += block.bytes;
  batch.context = context;
  const std::uint64_t bytes = batch.bytes;
  batch.blocks = std::move(blocks);
  {
    std::lock_guard<SpinLock> guard(thread.lock);
    try {
      thread.marked[device.ordinal].push_back(std::move(batch));
    } catch (...) {
      blocks = std::move(batch.blocks);  // push_back left it as it was
      return false;
    }
    thread.mark_marked(device.ordinal, true);
  }
  device.marked_bytes.fetch_add(bytes, std::memory_order_relaxed);
  device.marked_batches.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool return_passed_batches(ThreadState& thread, DeviceState& device) noexcept {
  const int d = device.ordinal;
  std::vector<MarkedBatch> passed;
  {
    std::lock_guard<SpinLock> guard(thread.lock);
    move_passed(thread, d, passed);
  }
  if (passed.empty()) return false;
  give_back_passed(device, passed);
  return true;
}

void return_every_passed_batch(DeviceState& device) noexcept {
  const int d = device.ordinal;
  std::vector<MarkedBatch> passed;
  for_each_thread([&](ThreadState& thread) {
    if (thread.may_have_marked(d)) move_passed(thread, d, passed);
  });
  // Their owners are alive or not by now: return_to_owners asks the registry, as for the queue's rounds.
  if (!passed.empty()) give_back_passed(device, passed);
}

std::vector<MarkedBatch> take_marked_batches(ThreadState& thread, DeviceState& device) noexcept {
  const int d = device.ordinal;
  std::vector<MarkedBatch> taken;
  taken.swap(thread.marked[d]);
  thread.mark_marked(d, false);
  std::uint64_t bytes = 0;
  for (const MarkedBatch& batch : taken) bytes += batch.bytes;
  if (bytes) device.marked_bytes.fetch_sub(bytes, std::memory_order_relaxed);
  return taken;
}

}  // namespace gpushim::router
