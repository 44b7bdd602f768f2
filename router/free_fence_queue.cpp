#include "router/free_fence_queue.h"

#include <algorithm>
#include <new>
#include <utility>

namespace gpushim {
namespace {

constexpr std::size_t kMaxPendingAnswersPerPoll = 4;

}  // namespace

bool FreeFenceQueue::try_record(ClosedBatch& batch) noexcept {
  FenceEvents::Record result =
      batch.stream_fence ? events_.record_stream_fence(batch.context, batch.stream, &batch.fence)
                         : events_.record_device_fence(batch.context, &batch.fence);
  batch.recorded = result == FenceEvents::Record::recorded;
  return batch.recorded;
}

void FreeFenceQueue::enqueue(ClosedBatch batch) noexcept {
  if (batch.blocks.empty()) return;
  for (const FreedBlock& block : batch.blocks) batch.bytes += block.bytes;
  std::lock_guard<std::mutex> guard(lock_);
  // Orphans ride along with the next device fence: a device fence covers all earlier work, so it
  // covers theirs too.
  if (!batch.stream_fence && !orphans_.empty()) {
    for (const FreedBlock& block : orphans_) batch.bytes += block.bytes;
    try {
      batch.blocks.insert(batch.blocks.end(), orphans_.begin(), orphans_.end());
      for (const FreedBlock& block : orphans_) pending_bytes_ -= block.bytes;
      orphans_.clear();
    } catch (...) {
      for (const FreedBlock& block : orphans_) batch.bytes -= block.bytes;
    }
  }
  try_record(batch);
  pending_bytes_ += batch.bytes;
  peak_pending_bytes_ = std::max(peak_pending_bytes_, pending_bytes_);
  try {
    queue_.push_back(std::move(batch));
  } catch (...) {
    // No host memory for the queue node: these blocks leak (held forever), which is safe.
    pending_bytes_ -= batch.bytes;
  }
  held_.store(!queue_.empty() || !orphans_.empty(), std::memory_order_relaxed);
}

void FreeFenceQueue::close_device_batch(std::vector<FreedBlock> blocks, FenceContext context) noexcept {
  ClosedBatch batch;
  batch.blocks = std::move(blocks);
  batch.context = context;
  enqueue(std::move(batch));
  poll();
}

void FreeFenceQueue::close_stream_batch(std::vector<FreedBlock> blocks, FenceContext context,
                                        StreamHandle stream) noexcept {
  ClosedBatch batch;
  batch.blocks = std::move(blocks);
  batch.context = context;
  batch.stream_fence = true;
  batch.stream = stream;
  enqueue(std::move(batch));
  poll();
}

void FreeFenceQueue::adopt_orphans(std::vector<FreedBlock> blocks) noexcept {
  std::lock_guard<std::mutex> guard(lock_);
  try {
    for (const FreedBlock& block : blocks) {
      orphans_.push_back(block);
      pending_bytes_ += block.bytes;
    }
    peak_pending_bytes_ = std::max(peak_pending_bytes_, pending_bytes_);
  } catch (...) {
    // Held forever: safe, only wasteful.
  }
  held_.store(!queue_.empty() || !orphans_.empty(), std::memory_order_relaxed);
}

std::size_t FreeFenceQueue::give_back(std::vector<ClosedBatch>& done) noexcept {
  std::size_t bytes = 0;
  for (ClosedBatch& batch : done) {
    events_.release(batch.fence);
    for (const FreedBlock& block : batch.blocks) {
      backend_.deallocate(block.ptr, block.bytes, block.stream);
      bytes += block.bytes;
    }
  }
  return bytes;
}

std::size_t FreeFenceQueue::poll() noexcept {
  if (!events_.may_give_back()) return 0;
  std::vector<ClosedBatch> done;
  {
    std::lock_guard<std::mutex> guard(lock_);
    if (!orphans_.empty()) {
      // Orphans alone (no thread closes a batch on this device any more): give them their own fence.
      ClosedBatch batch;
      batch.blocks.swap(orphans_);
      for (const FreedBlock& block : batch.blocks) batch.bytes += block.bytes;
      try_record(batch);
      try {
        queue_.push_back(std::move(batch));
      } catch (...) {
      }
    }
    // When the GPU runs behind, the queue holds many fences and the oldest are the likeliest to be done:
    // after kMaxPendingAnswersPerPoll of them answer "not ready", the rest wait for the next poll instead
    // of costing a cuEventQuery each on every close. Skipping only ever delays a block's return.
    std::size_t pending_answers = 0;
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (!it->recorded && !try_record(*it)) {
        ++it;
        continue;
      }
      if (pending_answers >= kMaxPendingAnswersPerPoll ||
          events_.query(it->fence) != FenceEvents::Status::complete) {
        ++pending_answers;
        ++it;
        continue;
      }
      pending_bytes_ -= it->bytes;
      try {
        done.push_back(std::move(*it));
      } catch (...) {
        ++it;  // keep it for the next poll
        pending_bytes_ += it[-1].bytes;
        continue;
      }
      it = queue_.erase(it);
    }
    held_.store(!queue_.empty() || !orphans_.empty(), std::memory_order_relaxed);
  }
  // Outside the lock: a driver-backed backend's deallocate is a driver call.
  return give_back(done);
}

std::size_t FreeFenceQueue::synchronize_all() noexcept {
  if (!events_.may_give_back()) return 0;
  std::vector<ClosedBatch> recorded;
  {
    std::lock_guard<std::mutex> guard(lock_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (!it->recorded && !try_record(*it)) {
        ++it;
        continue;
      }
      pending_bytes_ -= it->bytes;
      try {
        recorded.push_back(std::move(*it));
      } catch (...) {
        pending_bytes_ += it->bytes;
        ++it;
        continue;
      }
      it = queue_.erase(it);
    }
    held_.store(!queue_.empty() || !orphans_.empty(), std::memory_order_relaxed);
  }
  for (ClosedBatch& batch : recorded) events_.synchronize(batch.fence);
  return give_back(recorded);
}

std::size_t FreeFenceQueue::give_back_device_batches(std::vector<FreedBlock> open) noexcept {
  if (!events_.may_give_back()) {
    // A capture forbids the backend's driver calls now: the open blocks wait as orphans (fenced later).
    adopt_orphans(std::move(open));
    return 0;
  }
  // In the order they were freed, as poll() gives them back: closed batches, orphans, the open batches.
  std::vector<ClosedBatch> done;
  {
    std::lock_guard<std::mutex> guard(lock_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->stream_fence) {
        ++it;
        continue;
      }
      try {
        done.push_back(std::move(*it));
      } catch (...) {
        break;  // no host memory: the rest wait for their fences as before
      }
      pending_bytes_ -= done.back().bytes;
      it = queue_.erase(it);
    }
    try {
      done.emplace_back();
      done.back().blocks.swap(orphans_);
      for (const FreedBlock& block : done.back().blocks) pending_bytes_ -= block.bytes;
      done.back().blocks.insert(done.back().blocks.end(), open.begin(), open.end());
      open.clear();
    } catch (...) {
    }
    held_.store(!queue_.empty() || !orphans_.empty(), std::memory_order_relaxed);
  }
  if (!open.empty()) adopt_orphans(std::move(open));  // no host memory above: fenced by a later poll
  // Outside the lock, as poll(): the events go back to their pool, the blocks to the backend.
  return give_back(done);
}

std::uint64_t FreeFenceQueue::pending_bytes() const noexcept {
  std::lock_guard<std::mutex> guard(lock_);
  return pending_bytes_;
}

std::uint64_t FreeFenceQueue::peak_pending_bytes() const noexcept {
  std::lock_guard<std::mutex> guard(lock_);
  return peak_pending_bytes_;
}

bool FreeFenceQueue::holds(const void* p) const noexcept {
  std::lock_guard<std::mutex> guard(lock_);
  for (const FreedBlock& block : orphans_)
    if (block.ptr == p) return true;
  for (const ClosedBatch& batch : queue_)
    for (const FreedBlock& block : batch.blocks)
      if (block.ptr == p) return true;
  return false;
}

std::size_t FreeFenceQueue::batches() const noexcept {
  std::lock_guard<std::mutex> guard(lock_);
  return queue_.size();
}

void FreeFenceQueue::reset_after_fork() noexcept {
  new (&lock_) std::mutex();
  held_.store(!queue_.empty() || !orphans_.empty(), std::memory_order_relaxed);
}

}  // namespace gpushim
