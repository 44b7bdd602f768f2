#include "router/free_fence_queue.h"

#include <algorithm>
#include <chrono>
#include <new>
#include <thread>
#include <utility>

#include "router/block_hand_back.h"

namespace gpushim {
namespace {

// When the GPU runs behind, the queue holds many fences and the oldest are the likeliest to be done:
// after this many of them answer "not ready", the rest wait for the next poll instead of costing a
// cuEventQuery each on every close. Skipping only ever delays a block's return.
constexpr std::size_t kMaxPendingAnswersPerPoll = 4;
// Fences a poll looks at, at most (completed ones do not count against the answers above).
constexpr std::size_t kMaxFencesAskedPerPoll = 16;
// The driver-lock holder records, then looks once more for batches closed meanwhile (their closes found
// the lock taken): those would otherwise wait for the next close or poll. Bounded, so one free never
// keeps recording for every other thread.
constexpr int kRecordRounds = 2;
// Fences one round records at most (one per context and kind of batch: a program has a few contexts).
constexpr std::size_t kMaxFencesPerRound = 16;
// How long a waiting poll (an allocation at the peak or in need) yields while another thread polls
// before it sleeps on the lock: a poll records and asks a few fences, tens of microseconds.
constexpr auto kWaitingPollYieldFor = std::chrono::microseconds(200);

}  // namespace

bool FreeFenceQueue::try_record(ClosedBatch& batch) noexcept {
  batch.recorded = events_.record_device_fence(batch.context, &batch.fence) == FenceEvents::Record::recorded;
  if (batch.recorded) batch.recorded_at = Clock::now();
  return batch.recorded;
}

void FreeFenceQueue::update_held() noexcept {
  held_.store(!queue_.empty() || !orphans_.empty(), std::memory_order_relaxed);
}

void FreeFenceQueue::enqueue(std::unique_ptr<ClosedBatch> batch) noexcept {
  // Never empty: both closes return before an empty batch is made (and the stream's before its event).
  for (const FreedBlock& block : batch->blocks) batch->bytes += block.bytes;
  batch->closed_at = Clock::now();
  std::lock_guard<AdaptiveMutex> guard(lock_);
  // Orphans ride along with the next device fence: a device fence covers all earlier work, so it
  // covers theirs too.
  if (!batch->stream_fence && !orphans_.empty()) {
    try {
      batch->blocks.insert(batch->blocks.end(), orphans_.begin(), orphans_.end());
      for (const FreedBlock& block : orphans_) batch->bytes += block.bytes;
      for (const FreedBlock& block : orphans_) pending_bytes_ -= block.bytes;
      orphans_.clear();
    } catch (...) {
      // No host memory: the orphans wait for their own fence.
    }
  }
  const std::size_t bytes = batch->bytes;
  try {
    queue_.push_back(std::move(batch));
    pending_bytes_ += bytes;
    peak_pending_bytes_ = std::max(peak_pending_bytes_, pending_bytes_);
  } catch (...) {
    // No host memory for the queue node: these blocks leak (held forever), which is safe.
  }
  unrecorded_.store(true, std::memory_order_release);
  update_held();
}

void FreeFenceQueue::close_device_batch(std::vector<FreedBlock> blocks, FenceContext context) noexcept {
  if (blocks.empty()) return;  // nothing to fence (a drained stream list aged out, close_idle_stream_lists)
  std::unique_ptr<ClosedBatch> batch(new (std::nothrow) ClosedBatch);
  if (!batch) return;  // no host memory: the blocks are held forever, which is safe
  batch->blocks = std::move(blocks);
  batch->context = context;
  enqueue(std::move(batch));
  poll();
}

void FreeFenceQueue::close_stream_batch(std::vector<FreedBlock> blocks, FenceContext context,
                                        StreamHandle stream) noexcept {
  // A drained list (its blocks all reused on its stream) closes empty at the stream's destruction: no
  // event for it, as enqueue would drop the batch with its event still held.
  if (blocks.empty()) return;
  std::unique_ptr<ClosedBatch> batch(new (std::nothrow) ClosedBatch);
  if (!batch) return;
  batch->blocks = std::move(blocks);
  batch->context = context;
  batch->stream_fence = true;
  batch->stream = stream;
  // Recorded here, by the closing thread: the program has just freed on this stream, so it is alive
  // now, but a record deferred to the driver-lock holder could find it destroyed. One event, no
  // active-stream walk: cheap enough to pay in the close. Postponed (a capture), it waits for a device
  // fence like any other batch.
  batch->recorded = events_.record_stream_fence(context, stream, &batch->fence) == FenceEvents::Record::recorded;
  if (batch->recorded) batch->recorded_at = Clock::now();
  enqueue(std::move(batch));
  poll();
}

void FreeFenceQueue::adopt_orphans(std::vector<FreedBlock> blocks) noexcept {
  std::lock_guard<AdaptiveMutex> guard(lock_);
  try {
    for (const FreedBlock& block : blocks) {
      orphans_.push_back(block);
      pending_bytes_ += block.bytes;
    }
    peak_pending_bytes_ = std::max(peak_pending_bytes_, pending_bytes_);
  } catch (...) {
    // Held forever: safe, only wasteful.
  }
  unrecorded_.store(true, std::memory_order_release);
  update_held();
}

void FreeFenceQueue::record_waiting(bool all) noexcept {
  bool deferred = false;
  for (int round = 0; round < kRecordRounds && unrecorded_.exchange(false, std::memory_order_acq_rel); ++round) {
    ClosedBatch* waiting[kMaxFencesPerRound];  // no allocation: every close runs this
    std::size_t count = 0;
    // Batches closed after `due` wait: the oldest of each kind decides for all of its kind.
    const Clock::time_point now = Clock::now();
    const bool defer = !all && defer_records_.load(std::memory_order_relaxed);
    const Clock::time_point due = defer ? now - record_after_ : Clock::time_point::max();
    {
      std::lock_guard<AdaptiveMutex> guard(lock_);
      if (!orphans_.empty()) {
        // Orphans alone (no thread closes a batch on this device any more): a device fence of their own.
        std::unique_ptr<ClosedBatch> batch(new (std::nothrow) ClosedBatch);
        try {
          if (batch) {
            queue_.emplace_back();
            batch->blocks.swap(orphans_);
            for (const FreedBlock& block : batch->blocks) batch->bytes += block.bytes;
            batch->closed_at = now;  // closed now, as any batch: it waits its delay like the others
            queue_.back() = std::move(batch);
          }
        } catch (...) {
        }
      }
      // One fence per context: batches that would get the same fence are merged into the oldest of their
      // kind, which keeps its place in the queue.
      for (auto it = queue_.begin(); it != queue_.end();) {
        ClosedBatch& batch = **it;
        if (batch.recorded) {
          ++it;
          continue;
        }
        ClosedBatch** const same = std::find_if(waiting, waiting + count, [&](const ClosedBatch* w) {
          return w->stream_fence == batch.stream_fence && w->context == batch.context;
        });
        if (same == waiting + count) {
          if (count < kMaxFencesPerRound) waiting[count++] = &batch;
          else unrecorded_.store(true, std::memory_order_relaxed);  // more contexts: the next round
          ++it;
          continue;
        }
        try {
          std::vector<std::vector<FreedBlock>>& parts = (*same)->parts;
          parts.reserve(parts.size() + 1 + batch.parts.size());  // the moves below cannot fail
        } catch (...) {
          // No host memory to merge: this batch waits for the next round.
          unrecorded_.store(true, std::memory_order_relaxed);
          ++it;
          continue;
        }
        (*same)->parts.push_back(std::move(batch.blocks));
        for (std::vector<FreedBlock>& part : batch.parts) (*same)->parts.push_back(std::move(part));
        (*same)->bytes += batch.bytes;
        it = queue_.erase(it);
      }
    }
    // Outside lock_: the driver calls. Closes and holds() on other threads go on meanwhile.
    for (std::size_t i = 0; i < count; ++i) {
      if (waiting[i]->closed_at > due) {
        deferred = true;  // not due yet: a later poll records it
        continue;
      }
      // Waited in vain: the streams stay busy longer than the delay. Record at once until the work turns
      // ordered again.
      if (defer) defer_records_.store(false, std::memory_order_relaxed);
      if (!try_record(*waiting[i])) {
        // A capture is active: the rest waits for the next poll after it.
        unrecorded_.store(true, std::memory_order_relaxed);
        return;
      }
    }
  }
  if (deferred) unrecorded_.store(true, std::memory_order_relaxed);
}

template <typename Predicate>
void FreeFenceQueue::move_out_if(Predicate take, Batches& out) noexcept {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (!take(**it)) {
      ++it;
      continue;
    }
    try {
      out.push_back(std::move(*it));
    } catch (...) {
      break;  // no host memory: the rest stay queued for a later poll
    }
    pending_bytes_ -= out.back()->bytes;
    it = queue_.erase(it);
  }
  update_held();
}

void FreeFenceQueue::take_completed(Batches& done) noexcept {
  ClosedBatch* asked[kMaxFencesAskedPerPoll];
  std::size_t count = 0;
  {
    std::lock_guard<AdaptiveMutex> guard(lock_);
    for (const std::unique_ptr<ClosedBatch>& batch : queue_) {
      if (!batch->recorded) continue;
      asked[count++] = batch.get();
      if (count == kMaxFencesAskedPerPoll) break;
    }
  }
  if (count == 0) return;
  bool complete[kMaxFencesAskedPerPoll] = {};
  std::size_t pending_answers = 0;
  for (std::size_t i = 0; i < count && pending_answers < kMaxPendingAnswersPerPoll; ++i) {
    complete[i] = events_.query(asked[i]->fence) == FenceEvents::Status::complete;
    if (!complete[i]) ++pending_answers;
  }
  count_completed(asked, complete, count);
  std::lock_guard<AdaptiveMutex> guard(lock_);
  move_out_if(
      [&](const ClosedBatch& batch) {
        const std::size_t i = static_cast<std::size_t>(std::find(asked, asked + count, &batch) - asked);
        return i < count && complete[i];
      },
      done);
}

void FreeFenceQueue::count_completed(ClosedBatch* const* asked, const bool* complete, std::size_t count) noexcept {
  // The driver-lock holder's: no other thread changes a queued batch meanwhile (record_waiting merges,
  // and take_device_batches takes, only under the driver lock). One clock read a poll that found any.
  Clock::time_point now{};
  for (std::size_t i = 0; i < count; ++i) {
    if (!complete[i]) continue;
    if (now == Clock::time_point{}) now = Clock::now();
    const ClosedBatch& batch = *asked[i];
    std::size_t blocks = 0;
    for_each_part(batch, [&](const std::vector<FreedBlock>& part) { blocks += part.size(); });
    // closed_at is enqueue's, taken before a stream batch's record is: a stream batch counts 0 there.
    const auto since = [](Clock::time_point from, Clock::time_point to) {
      return to > from ? static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count())
                       : std::uint64_t{0};
    };
    completed_fences_.fetch_add(1, std::memory_order_relaxed);
    completed_blocks_.fetch_add(blocks, std::memory_order_relaxed);
    close_to_record_ns_.fetch_add(since(batch.closed_at, batch.recorded_at), std::memory_order_relaxed);
    record_to_complete_ns_.fetch_add(since(batch.recorded_at, now), std::memory_order_relaxed);
  }
}

std::size_t FreeFenceQueue::give_back(Batches& done, bool to_owners, std::uint64_t* blocks_out) noexcept {
  // In a round of the poller's own blocks, the small ones go to the backend through the poller
  // (BlockOwners says why); a round of small blocks only skips the owners altogether. (The largest
  // block is found here so that such a round makes no return_to_owners call: without this pass, a
  // fenced 256 B pair took 24 instructions more in the CPU guard, thirteenth session.)
  // The bytes are counted in the same pass, before the owners take theirs: those are free from here on
  // too.
  std::size_t own_kept_bytes = 0;
  std::size_t bytes = 0;
  bool others_in_round = false;
  std::size_t largest = 0;
  for (const std::unique_ptr<ClosedBatch>& batch : done) {
    if (!batch) continue;
    for_each_part(*batch, [&](const std::vector<FreedBlock>& blocks) {
      if (to_owners && owners_) others_in_round = others_in_round || !owners_->freed_by_caller(blocks);
      if (blocks_out) *blocks_out += blocks.size();
      for (const FreedBlock& block : blocks) {
        bytes += block.bytes;
        largest = std::max(largest, block.bytes);
      }
    });
  }
  if (to_owners && owners_) {
    if (!others_in_round) own_kept_bytes = own_kept_bytes_;
    to_owners = others_in_round || largest > own_kept_bytes_;
  }
  // What the owners did not take goes to the backend in chunks (router/block_hand_back.h), in the order
  // it was freed.
  BlockHandBack hand_back(to_owners ? owners_ : nullptr, backend_, own_kept_bytes);
  for (std::unique_ptr<ClosedBatch>& batch : done) {
    if (!batch) continue;
    events_.release(batch->fence);
    for_each_part(*batch, [&](std::vector<FreedBlock>& blocks) { hand_back.offer_to_owners(blocks); });
    hand_back.owners_done();
    for_each_part(*batch, [&](const std::vector<FreedBlock>& blocks) { hand_back.to_backend(blocks); });
  }
  return bytes;  // hand_back's last chunk goes as it leaves scope
}

std::size_t FreeFenceQueue::poll(Poller poller) noexcept {
  if (!events_.may_give_back()) return 0;
  const bool waits = poller != Poller::in_passing;
  std::unique_lock<std::mutex> driver(driver_lock_, std::try_to_lock);
  if (!driver.owns_lock()) {
    if (!waits) return 0;
    // An allocation at the peak or in need waits for the holder (it may be recording the very fence
    // this one needs), but asks the driver itself only if no poll ran meanwhile: many allocations at the
    // peak at once each asked in turn (16 threads with a stream each at 16 MiB on the H200: 36% of their
    // wall-clock time). The caller looks for memory again and polls again later.
    // It waits for that poll to end, not for the lock: queued on the mutex, the waiters were woken one
    // at a time, each to take the lock and find that a poll had run (the same case: 34% of the threads'
    // wall-clock time, in that queue). A holder that stays (a synchronize_all waits for the GPU) is
    // then waited for on the mutex.
    const std::uint64_t polls_seen = polls_.load(std::memory_order_relaxed);
    const auto yield_until = std::chrono::steady_clock::now() + kWaitingPollYieldFor;
    while (!driver.try_lock()) {
      if (polls_.load(std::memory_order_relaxed) != polls_seen) return 0;
      if (std::chrono::steady_clock::now() >= yield_until) {
        driver.lock();
        break;
      }
      std::this_thread::yield();
    }
    if (polls_.load(std::memory_order_relaxed) != polls_seen) return 0;
  }
  record_waiting(/*all=*/waits);
  Batches done;
  take_completed(done);
  polls_.fetch_add(1, std::memory_order_relaxed);
  driver.unlock();
  // Outside the locks: a driver-backed backend's deallocate is a driver call.
  return give_back(done, /*to_owners=*/poller != Poller::allocation_in_need);
}

std::size_t FreeFenceQueue::synchronize_all() noexcept {
  if (!events_.may_give_back()) return 0;
  Batches recorded;
  {
    std::lock_guard<std::mutex> driver(driver_lock_);
    unrecorded_.store(true, std::memory_order_relaxed);  // look at least once
    record_waiting(/*all=*/true);
    std::lock_guard<AdaptiveMutex> guard(lock_);
    move_out_if([](const ClosedBatch& batch) { return batch.recorded; }, recorded);
  }
  // The batches are ours now: wait without holding a lock.
  for (const std::unique_ptr<ClosedBatch>& batch : recorded) events_.synchronize(batch->fence);
  return give_back(recorded, false);
}

FreeFenceQueue::Taken FreeFenceQueue::take_device_batches(std::vector<std::vector<FreedBlock>> open) noexcept {
  Taken taken;
  if (!events_.may_give_back()) {
    // A capture forbids the backend's driver calls now: the open blocks wait as orphans (fenced later).
    for (std::vector<FreedBlock>& part : open) adopt_orphans(std::move(part));
    return taken;
  }
  // The work turns ordered: batches closed from now on wait record_after_ for their fence, as that may
  // happen again before it passes.
  if (record_after_.count() > 0) defer_records_.store(true, std::memory_order_relaxed);
  // The open batches become the parts of one batch, moved rather than copied, before lock_ (the
  // threads' batches were copied into one vector under the registry lock, then again under lock_: with
  // 16 threads at 256 B the transition's wait for the registry lock alone was 5% of all samples on the
  // H200, seventeenth session).
  std::unique_ptr<ClosedBatch> rest(new (std::nothrow) ClosedBatch);
  if (rest) {
    rest->parts = std::move(open);
    open.clear();  // moved from: empty, and said so
  }
  // In the order they were freed, as poll() gives them back: closed batches, orphans, the open batches.
  // The queued ones only if the driver lock is free: its holder may be recording a fence into one of
  // them, and they come back through their fences anyway. With a stream per thread the work turns ordered
  // at nearly every launch, and waiting for that lock here took 36-47% of 16 threads' wall-clock time at
  // 16 MiB on the H200. The open blocks are in no queue: they go back in any case.
  Batches& done = taken.batches;
  {
    std::unique_lock<std::mutex> driver(driver_lock_, std::try_to_lock);
    std::lock_guard<AdaptiveMutex> guard(lock_);
    if (driver.owns_lock()) move_out_if([](const ClosedBatch& batch) { return !batch.stream_fence; }, done);
    if (rest) {
      try {
        done.emplace_back();  // the slot first: the move into it below cannot fail
      } catch (...) {
        open = std::move(rest->parts);  // back where they came from, for below
        rest.reset();
      }
    }
    if (rest) {
      if (driver.owns_lock()) {
        rest->blocks.swap(orphans_);
        for (const FreedBlock& block : rest->blocks) pending_bytes_ -= block.bytes;
      }
      done.back() = std::move(rest);
    }
    update_held();
  }
  // No host memory above: fenced by a later poll.
  for (std::vector<FreedBlock>& part : open)
    if (!part.empty()) adopt_orphans(std::move(part));
  return taken;
}

std::size_t FreeFenceQueue::give_back_taken(Taken taken) noexcept {
  // Outside the locks, as poll(): the events go back to their pool, the blocks to their owners or the
  // backend.
  std::uint64_t blocks = 0;
  const std::size_t bytes = give_back(taken.batches, true, &blocks);
  unfenced_blocks_.fetch_add(blocks, std::memory_order_relaxed);
  return bytes;
}

std::uint64_t FreeFenceQueue::pending_bytes() const noexcept {
  std::lock_guard<AdaptiveMutex> guard(lock_);
  return pending_bytes_;
}

FenceTimes FreeFenceQueue::times() const noexcept {
  FenceTimes times;
  times.fences = completed_fences_.load(std::memory_order_relaxed);
  times.blocks = completed_blocks_.load(std::memory_order_relaxed);
  times.close_to_record_ns = close_to_record_ns_.load(std::memory_order_relaxed);
  times.record_to_complete_ns = record_to_complete_ns_.load(std::memory_order_relaxed);
  times.unfenced_blocks = unfenced_blocks_.load(std::memory_order_relaxed);
  times.driver_polls = polls_.load(std::memory_order_relaxed);
  times.events = events_.counts();
  return times;
}

std::uint64_t FreeFenceQueue::peak_pending_bytes() const noexcept {
  std::lock_guard<AdaptiveMutex> guard(lock_);
  return peak_pending_bytes_;
}

bool FreeFenceQueue::holds(const void* p) const noexcept {
  std::lock_guard<AdaptiveMutex> guard(lock_);
  for (const FreedBlock& block : orphans_)
    if (block.ptr == p) return true;
  bool held = false;
  for (const std::unique_ptr<ClosedBatch>& batch : queue_)
    for_each_part(*batch, [&](const std::vector<FreedBlock>& blocks) {
      for (const FreedBlock& block : blocks) held = held || block.ptr == p;
    });
  return held;
}

std::size_t FreeFenceQueue::batches() const noexcept {
  std::lock_guard<AdaptiveMutex> guard(lock_);
  return queue_.size();
}

void FreeFenceQueue::reset_after_fork() noexcept {
  new (&driver_lock_) std::mutex();
  new (&lock_) AdaptiveMutex();
  update_held();
}

}  // namespace gpushim
