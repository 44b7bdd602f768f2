// The free-fence state machine with a fake event source: blocks go back to the backend only after every
// event of their fence completed; nothing is recorded while a capture is active; orphans of exited
// threads are fenced by the next close or poll; synchronize_all is the memory-pressure path.
#include "router/free_fence_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "tests/recording_backend.h"

namespace gpushim {
namespace {

using testing::RecordingBackend;

// Each recorded event gets an id; a test completes ids by hand. `device_streams` events per device fence
// (the legacy stream plus non-blocking streams).
class FakeEvents final : public FenceEvents {
 public:
  Record record_device_fence(FenceContext context, Fence* out) noexcept override {
    if (capturing) return Record::postponed;
    if (while_recording) std::exchange(while_recording, nullptr)();
    ++device_fences;
    last_context = context;
    for (int i = 0; i < device_streams; ++i) out->events.push_back({context, next_id++});
    return Record::recorded;
  }
  Record record_stream_fence(FenceContext context, StreamHandle stream, Fence* out) noexcept override {
    if (capturing) return Record::postponed;
    ++stream_fences;
    last_stream = stream;
    out->events.push_back({context, next_id++});
    return Record::recorded;
  }
  Status query(Fence& fence) noexcept override {
    ++queries;
    if (fence.events.empty()) return Status::pending;
    for (const FenceEvent& e : fence.events)
      if (!complete.count(e.event)) return Status::pending;
    return Status::complete;
  }
  void synchronize(const Fence& fence) noexcept override {
    ++synchronizes;
    for (const FenceEvent& e : fence.events) complete.insert(e.event);
  }
  void release(Fence& fence) noexcept override {
    released += fence.events.size();
    fence.events.clear();
  }
  bool may_give_back() noexcept override { return !holding; }
  bool capturing = false;
  bool holding = false;
  std::function<void()> while_recording;  // runs once, inside the next device-fence record
  int device_streams = 1;
  std::uintptr_t next_id = 1;
  std::set<std::uintptr_t> complete;
  int device_fences = 0, stream_fences = 0, queries = 0, synchronizes = 0;
  std::size_t released = 0;
  FenceContext last_context = nullptr;
  StreamHandle last_stream = 0;
};

void* ptr(std::uintptr_t i) { return reinterpret_cast<void*>(i << 12); }

std::vector<FreedBlock> blocks(std::uintptr_t first, int count, std::size_t bytes = 256) {
  std::vector<FreedBlock> out;
  for (int i = 0; i < count; ++i) out.push_back({ptr(first + i), bytes, 0});
  return out;
}

TEST(PendingBatch, ClosesAt64BlocksOr64MiB) {
  PendingBatch batch;
  for (std::size_t i = 1; i < kBatchMaxBlocks; ++i) ASSERT_FALSE(batch.add({ptr(i), 256, 0}, nullptr));
  EXPECT_TRUE(batch.add({ptr(100), 256, 0}, nullptr));
  EXPECT_EQ(batch.take().size(), kBatchMaxBlocks);
  EXPECT_TRUE(batch.empty());
  EXPECT_EQ(batch.bytes(), 0u);

  ASSERT_FALSE(batch.add({ptr(1), kBatchMaxBytes / 2, 0}, nullptr));
  EXPECT_TRUE(batch.add({ptr(2), kBatchMaxBytes / 2, 0}, nullptr));
}

TEST(PendingBatch, KeepsTheContextOfItsFirstFree) {
  PendingBatch batch;
  int a = 0, b = 0;
  batch.add({ptr(1), 256, 0}, &a);
  batch.add({ptr(2), 256, 0}, &b);
  EXPECT_EQ(batch.context(), &a);
}

// The transition to ordered in one go, as router.cpp's poll_turned_ordered does it in two steps.
std::size_t give_back_device_batches(FreeFenceQueue& queue, std::vector<std::vector<FreedBlock>> open) {
  return queue.give_back_taken(queue.take_device_batches(std::move(open)));
}

// A queue over a backend that records what comes back and an event source the test completes by hand.
class FreeFenceQueueTest : public ::testing::Test {
 protected:
  RecordingBackend backend;
  FakeEvents events;
  FreeFenceQueue queue{backend, events};
};

TEST_F(FreeFenceQueueTest, BlocksReturnOnlyAfterEveryEventCompletes) {
  events.device_streams = 3;  // legacy + two non-blocking streams
  int context = 0;
  queue.close_device_batch(blocks(1, 4), &context);
  EXPECT_EQ(events.device_fences, 1);
  EXPECT_EQ(events.last_context, &context);
  EXPECT_TRUE(backend.returned.empty());
  EXPECT_EQ(queue.pending_bytes(), 4u * 256);

  events.complete = {1, 2};  // two of three streams done
  queue.poll();
  EXPECT_TRUE(backend.returned.empty());

  events.complete.insert(3);
  EXPECT_EQ(queue.poll(), 4u * 256);
  EXPECT_EQ(backend.returned.size(), 4u);
  EXPECT_EQ(queue.pending_bytes(), 0u);
  EXPECT_EQ(queue.batches(), 0u);
  EXPECT_EQ(events.released, 3u);  // events back to the pool
}

// GPUSHIM_STATS' "fences" line (FenceTimes): a fence counts once it is found complete, with its blocks
// and its waits; blocks that go back because the work turned ordered count apart, unfenced.
TEST_F(FreeFenceQueueTest, TimesCountCompletedFencesTheirBlocksAndTheUnfencedOnes) {
  queue.close_device_batch(blocks(1, 4), nullptr);
  queue.close_device_batch(blocks(10, 2), nullptr);
  FenceTimes times = queue.times();
  EXPECT_EQ(times.fences, 0u) << "recorded, not complete";
  EXPECT_GE(times.driver_polls, 2u);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  events.complete = {1};
  queue.poll();
  times = queue.times();
  EXPECT_EQ(times.fences, 1u);
  EXPECT_EQ(times.blocks, 4u);
  EXPECT_GE(times.record_to_complete_ns, 2'000'000u) << "the fence was found complete 2 ms after its record";
  EXPECT_LT(times.close_to_record_ns, times.record_to_complete_ns) << "recorded at its close";
  EXPECT_EQ(times.unfenced_blocks, 0u);
  EXPECT_EQ(give_back_device_batches(queue, {blocks(20, 3)}), 5u * 256) << "the queued batch and the open one";
  times = queue.times();
  EXPECT_EQ(times.fences, 1u);
  EXPECT_EQ(times.unfenced_blocks, 5u);
}

// A give-back hands the backend its blocks in batches (Allocator::deallocate_batch: one arena lock for
// many), not one call per block: 100 blocks of two fences in one poll are four calls of at most 32.
TEST_F(FreeFenceQueueTest, AGiveBackReachesTheBackendInBatches) {
  queue.close_device_batch(blocks(1, 60), nullptr);
  queue.close_device_batch(blocks(100, 40), nullptr);
  events.complete = {1, 2};
  EXPECT_EQ(queue.poll(), 100u * 256);
  EXPECT_EQ(backend.returned.size(), 100u);
  EXPECT_EQ(backend.batch_calls, 4);
}

TEST_F(FreeFenceQueueTest, BatchesCompleteIndependently) {
  queue.close_device_batch(blocks(1, 2), nullptr);  // event 1
  queue.close_device_batch(blocks(10, 2), nullptr); // event 2
  events.complete = {2};
  queue.poll();
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(10), ptr(11)}));
  EXPECT_EQ(queue.batches(), 1u);
}

TEST_F(FreeFenceQueueTest, NothingIsRecordedWhileCapturingAndBlocksStayHeld) {
  events.capturing = true;
  queue.close_device_batch(blocks(1, 3), nullptr);
  EXPECT_EQ(events.device_fences, 0);
  queue.poll();
  EXPECT_EQ(queue.synchronize_all(), 0u);  // an unrecorded fence cannot be waited for
  EXPECT_TRUE(backend.returned.empty());
  EXPECT_EQ(queue.pending_bytes(), 3u * 256);

  events.capturing = false;
  queue.poll();  // records the postponed fence now
  EXPECT_EQ(events.device_fences, 1);
  EXPECT_TRUE(backend.returned.empty());  // recorded, not yet complete
  events.complete = {1};
  queue.poll();
  EXPECT_EQ(backend.returned.size(), 3u);
}

TEST_F(FreeFenceQueueTest, StreamBatchUsesOneEventOnItsStream) {
  events.device_streams = 5;
  queue.close_stream_batch(blocks(1, 2), nullptr, 0x1234);
  EXPECT_EQ(events.stream_fences, 1);
  EXPECT_EQ(events.device_fences, 0);
  EXPECT_EQ(events.last_stream, 0x1234u);
  events.complete = {1};
  queue.poll();
  EXPECT_EQ(backend.returned.size(), 2u);
}

TEST_F(FreeFenceQueueTest, OrphansNeedNoEventSourceUntilTheNextPoll) {
  queue.adopt_orphans(blocks(1, 5));  // thread exit: must not touch the event source
  EXPECT_EQ(events.device_fences + events.stream_fences + events.queries, 0);
  EXPECT_EQ(queue.pending_bytes(), 5u * 256);
  queue.poll();
  EXPECT_EQ(events.device_fences, 1);
  EXPECT_TRUE(backend.returned.empty());
  events.complete = {1};
  queue.poll();
  EXPECT_EQ(backend.returned.size(), 5u);
  EXPECT_EQ(queue.pending_bytes(), 0u);
}

TEST_F(FreeFenceQueueTest, OrphansRideWithTheNextDeviceBatch) {
  queue.adopt_orphans(blocks(1, 2));
  queue.close_device_batch(blocks(10, 2), nullptr);
  EXPECT_EQ(events.device_fences, 1);  // one fence covers both
  events.complete = {1};
  queue.poll();
  EXPECT_EQ(backend.returned.size(), 4u);
}

TEST_F(FreeFenceQueueTest, SynchronizeAllIsThePressurePath) {
  queue.close_device_batch(blocks(1, 2, 1 << 20), nullptr);
  queue.close_stream_batch(blocks(10, 1, 1 << 20), nullptr, 7);
  EXPECT_TRUE(backend.returned.empty());
  EXPECT_EQ(queue.synchronize_all(), 3u << 20);
  EXPECT_EQ(events.synchronizes, 2);
  EXPECT_EQ(backend.returned.size(), 3u);
  EXPECT_EQ(queue.pending_bytes(), 0u);
}

TEST_F(FreeFenceQueueTest, CompletedBlocksWaitWhileGivingBackIsForbidden) {
  queue.close_device_batch(blocks(1, 2), nullptr);
  events.complete = {1};
  events.holding = true;  // a capture runs and the backend frees through the driver
  EXPECT_EQ(queue.poll(), 0u);
  EXPECT_EQ(queue.synchronize_all(), 0u);
  EXPECT_TRUE(backend.returned.empty());
  events.holding = false;
  EXPECT_EQ(queue.poll(), 512u);
}

// The transition's two steps (router.cpp takes under the activity lock, gives back after it): the take
// only moves blocks, with no backend call and no event released, and the give-back hands them over.
TEST_F(FreeFenceQueueTest, TakenDeviceBatchesReachTheBackendOnlyWhenGivenBack) {
  queue.close_device_batch(blocks(1, 2), nullptr);  // recorded, pending
  queue.adopt_orphans(blocks(30, 1));
  const std::size_t released = events.released;
  FreeFenceQueue::Taken taken = queue.take_device_batches({blocks(40, 1)});
  EXPECT_TRUE(backend.returned.empty()) << "the take called the backend";
  EXPECT_EQ(events.released, released) << "the take released an event";
  EXPECT_EQ(queue.pending_bytes(), 0u);
  EXPECT_FALSE(queue.holds(ptr(1)));
  EXPECT_EQ(queue.give_back_taken(std::move(taken)), 4u * 256);
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(1), ptr(2), ptr(30), ptr(40)}));
  EXPECT_EQ(events.released, released + 1);
}

// The work turned ordered: open, orphaned and device-fenced blocks go back with no event recorded or
// waited for; a stream fence (cuMemFreeAsync) still waits for its stream.
TEST_F(FreeFenceQueueTest, DeviceBatchesGoBackUnfencedWhenTheWorkTurnsOrdered) {
  queue.close_stream_batch(blocks(20, 1), nullptr, 7);  // event 1
  queue.close_device_batch(blocks(1, 2), nullptr);      // event 2, pending
  events.capturing = true;
  queue.close_device_batch(blocks(10, 1), nullptr);  // not recorded (a capture runs)
  queue.adopt_orphans(blocks(30, 1));
  events.capturing = false;
  const int fences_before = events.device_fences + events.stream_fences;
  const int queries_before = events.queries;

  EXPECT_EQ(give_back_device_batches(queue, {blocks(40, 3)}), 7u * 256);
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(1), ptr(2), ptr(10), ptr(30), ptr(40), ptr(41), ptr(42)}));
  EXPECT_EQ(events.device_fences + events.stream_fences, fences_before);
  EXPECT_EQ(events.queries, queries_before);
  EXPECT_EQ(events.released, 1u);  // the recorded device fence's event, back to its pool
  EXPECT_EQ(queue.batches(), 1u);  // only the stream batch waits
  EXPECT_EQ(queue.pending_bytes(), 256u);
  EXPECT_TRUE(queue.holds(ptr(20)));
  EXPECT_TRUE(queue.holds_blocks());

  events.complete = {1};
  EXPECT_EQ(queue.poll(), 256u);
  EXPECT_FALSE(queue.holds_blocks());
}

// A queue whose batches closed in passing wait `delay` for their fence (GPUSHIM_FENCE_DELAY): an hour
// where a test must see it not pass, however slow the machine.
class FreeFenceQueueDelay : public ::testing::Test {
 protected:
  FreeFenceQueue& with_delay(std::chrono::nanoseconds delay) {
    return queue_.emplace(backend, events, nullptr, kOwnBlockThroughCacheBytes, delay);
  }
  RecordingBackend backend;
  FakeEvents events;

 private:
  std::optional<FreeFenceQueue> queue_;
};

// GPUSHIM_FENCE_DELAY: once the work has turned ordered, a batch closed in passing waits for its fence,
// since the streams may go idle first; then it goes back with no fence at all.
TEST_F(FreeFenceQueueDelay, AfterTheWorkTurnedOrderedABatchClosedInPassingWaitsForItsFence) {
  FreeFenceQueue& queue = with_delay(std::chrono::hours(1));
  queue.close_device_batch(blocks(1, 2), nullptr);
  EXPECT_EQ(events.device_fences, 1) << "no transition seen yet: a delay would only hold blocks";
  events.complete = {1};
  EXPECT_EQ(queue.poll(), 512u);

  EXPECT_EQ(give_back_device_batches(queue, {}), 0u);  // the work turns ordered
  queue.close_device_batch(blocks(10, 2), nullptr);
  queue.close_device_batch(blocks(20, 2), nullptr);
  queue.poll();
  EXPECT_EQ(events.device_fences, 1) << "recorded before its delay passed";
  EXPECT_TRUE(queue.holds(ptr(10)));
  EXPECT_EQ(give_back_device_batches(queue, {}), 1024u);  // ordered again before the delay: no fence
  EXPECT_EQ(events.device_fences, 1);
  EXPECT_FALSE(queue.holds_blocks());
}

// An allocation at the peak may need the waiting blocks now: it records their fence at once.
TEST_F(FreeFenceQueueDelay, AnAllocationAtThePeakRecordsAWaitingBatchAtOnce) {
  FreeFenceQueue& queue = with_delay(std::chrono::hours(1));
  give_back_device_batches(queue, {});
  queue.close_device_batch(blocks(1, 2), nullptr);
  EXPECT_EQ(events.device_fences, 0);
  EXPECT_EQ(queue.poll(FreeFenceQueue::Poller::allocation_at_peak), 0u);  // recorded; the GPU is behind
  EXPECT_EQ(events.device_fences, 1);
  events.complete = {1};
  EXPECT_EQ(queue.poll(FreeFenceQueue::Poller::allocation_at_peak), 512u);
}

// A batch whose delay passed is recorded by the next poll, with every batch closed since (one fence);
// having waited in vain, later batches are fenced at their close until the work turns ordered again.
TEST_F(FreeFenceQueueDelay, ABatchThatWaitedInVainTurnsTheDelayOffUntilTheWorkIsOrderedAgain) {
  FreeFenceQueue& queue = with_delay(std::chrono::milliseconds(50));
  give_back_device_batches(queue, {});
  queue.close_device_batch(blocks(1, 2), nullptr);
  queue.close_device_batch(blocks(10, 2), nullptr);
  EXPECT_EQ(events.device_fences, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  queue.poll();
  EXPECT_EQ(events.device_fences, 1) << "the delay passed: one fence for both batches";
  EXPECT_EQ(queue.batches(), 1u);
  queue.close_device_batch(blocks(20, 2), nullptr);
  EXPECT_EQ(events.device_fences, 2) << "waited in vain once: the next batch is fenced at its close";

  give_back_device_batches(queue, {});
  queue.close_device_batch(blocks(30, 2), nullptr);
  EXPECT_EQ(events.device_fences, 2) << "ordered again: the delay is back";
}

// Orphans (a thread exited with its batch open) get a batch of their own at the next poll, closed then:
// it waits its delay too, and does not count as a batch that waited in vain.
TEST_F(FreeFenceQueueDelay, OrphansWaitTheirDelayAndLeaveItOn) {
  FreeFenceQueue& queue = with_delay(std::chrono::hours(1));
  give_back_device_batches(queue, {});
  queue.adopt_orphans(blocks(1, 2));
  queue.poll();
  EXPECT_EQ(events.device_fences, 0) << "the orphans' batch was recorded before its delay passed";
  queue.close_device_batch(blocks(10, 2), nullptr);
  EXPECT_EQ(events.device_fences, 0) << "the orphans turned the delay off";
  EXPECT_EQ(give_back_device_batches(queue, {}), 1024u);
}

TEST_F(FreeFenceQueueTest, WhileGivingBackIsForbiddenTheOpenBlocksWaitAsOrphans) {
  events.holding = true;
  EXPECT_EQ(give_back_device_batches(queue, {blocks(1, 2)}), 0u);
  EXPECT_TRUE(backend.returned.empty());
  EXPECT_TRUE(queue.holds(ptr(1)));
  events.holding = false;
  EXPECT_EQ(give_back_device_batches(queue, {}), 512u);
}

// Batches that wait for a fence together get one: a fence recorded after the last free of each covers
// them all. Different contexts still get a fence each (the batch's context names its legacy stream).
TEST_F(FreeFenceQueueTest, WaitingBatchesOfOneContextShareOneFence) {
  int a = 0, b = 0;
  events.capturing = true;  // nothing can be recorded: the batches wait, as behind a busy recorder
  queue.close_device_batch(blocks(1, 2), &a);
  queue.close_device_batch(blocks(10, 2), &a);
  queue.close_device_batch(blocks(20, 1), &b);
  queue.close_stream_batch(blocks(30, 1), &a, 7);
  EXPECT_EQ(events.device_fences + events.stream_fences, 0);
  EXPECT_EQ(queue.batches(), 3u);  // merged while waiting: context a's two batches are one
  events.capturing = false;
  queue.poll();
  // One for context a (two batches), one for b, and one for the stream batch: a record deferred past its
  // close is a device fence (its stream may be destroyed by then).
  EXPECT_EQ(events.device_fences, 3);
  EXPECT_EQ(events.stream_fences, 0);
  EXPECT_EQ(queue.batches(), 3u);
  EXPECT_TRUE(queue.holds(ptr(11)));
  EXPECT_EQ(queue.pending_bytes(), 6u * 256);
  events.complete = {1};  // context a's fence
  EXPECT_EQ(queue.poll(), 4u * 256);
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(1), ptr(2), ptr(10), ptr(11)}));
}

// Merged batches stay whole inside the batch they joined (moved, not copied, under the queue's lock):
// every block of each is still held, and goes back when the work turns ordered, with every thread's
// open batch.
TEST_F(FreeFenceQueueTest, MergedBatchesAreHeldAndGoBackWhole) {
  int a = 0;
  events.capturing = true;
  queue.close_device_batch(blocks(1, 2), &a);
  queue.close_device_batch(blocks(10, 3), &a);
  queue.close_device_batch(blocks(20, 1), &a);
  EXPECT_EQ(queue.batches(), 1u);
  for (int i : {1, 2, 10, 11, 12, 20}) EXPECT_TRUE(queue.holds(ptr(i))) << i;
  EXPECT_FALSE(queue.holds(ptr(3)));
  EXPECT_EQ(queue.pending_bytes(), 6u * 256);
  events.capturing = false;
  // Two threads' open batches, each a part of its own.
  EXPECT_EQ(give_back_device_batches(queue, {blocks(30, 1), {}, blocks(40, 2)}), 9u * 256);
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(1), ptr(2), ptr(10), ptr(11), ptr(12), ptr(20), ptr(30),
                                               ptr(40), ptr(41)}));
  EXPECT_EQ(queue.pending_bytes(), 0u);
}

// A batch closed on another thread while this one records finds the driver lock taken and returns at
// once; the recording thread looks again before it lets go and fences that batch too.
TEST_F(FreeFenceQueueTest, ABatchClosedWhileAnotherThreadRecordsGetsItsFenceFromThatThread) {
  bool other_returned = false;
  events.while_recording = [&] {
    std::thread other([&] {
      queue.close_device_batch(blocks(10, 2), nullptr);
      other_returned = true;
    });
    other.join();
  };
  queue.close_device_batch(blocks(1, 2), nullptr);
  EXPECT_TRUE(other_returned);
  EXPECT_EQ(events.device_fences, 2);  // this thread's, then the other's (closed after the first record)
  EXPECT_EQ(queue.batches(), 2u);
  events.complete = {1, 2};
  EXPECT_EQ(queue.poll(), 4u * 256);
}

// Takes the blocks whose owner is `taker`; the rest stay for the queue to give to the backend. The
// polling thread is `caller`.
class FakeOwners final : public BlockOwners {
 public:
  bool freed_by_caller(const std::vector<FreedBlock>& blocks) const noexcept override {
    for (const FreedBlock& block : blocks)
      if (block.owner && block.owner != caller) return false;
    return true;
  }
  void return_to_owners(std::vector<FreedBlock>* const* parts, std::size_t count,
                        std::size_t own_kept_bytes) noexcept override {
    ++calls;
    for (std::size_t k = 0; k < count; ++k) {
      std::vector<FreedBlock> rest;
      for (const FreedBlock& block : *parts[k]) {
        const bool kept = block.owner == caller && block.bytes <= own_kept_bytes;
        (block.owner == taker && !kept ? taken : rest).push_back(block);
      }
      parts[k]->swap(rest);
    }
  }
  int calls = 0;
  void* taker = nullptr;
  void* caller = nullptr;
  std::vector<FreedBlock> taken;
};

// A queue whose completed blocks go through FakeOwners.
class FreeFenceQueueOwners : public ::testing::Test {
 protected:
  RecordingBackend backend;
  FakeEvents events;
  FakeOwners owners;
  FreeFenceQueue queue{backend, events, &owners};
};

// A completed fence's blocks go to their owners first; the backend gets the others. The pressure path
// (synchronize_all) gives everything to the backend, where the waiting allocation looks.
TEST_F(FreeFenceQueueOwners, CompletedBlocksGoToTheirOwnersExceptUnderPressure) {
  int thread_a = 0, thread_b = 0;
  owners.taker = &thread_a;
  std::vector<FreedBlock> batch = {{ptr(1), 256, 0, &thread_a}, {ptr(2), 256, 0, &thread_b}, {ptr(3), 256, 0, &thread_a}};
  queue.close_device_batch(batch, nullptr);
  events.complete = {1};
  EXPECT_EQ(queue.poll(), 3u * 256) << "every block of the fence counts as given back";
  ASSERT_EQ(owners.taken.size(), 2u);
  EXPECT_EQ(owners.taken[0].ptr, ptr(1));
  EXPECT_EQ(owners.taken[1].ptr, ptr(3));
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(2)}));

  queue.close_device_batch({{ptr(4), 256, 0, &thread_a}}, nullptr);
  EXPECT_EQ(queue.synchronize_all(), 256u);
  EXPECT_EQ(owners.taken.size(), 2u) << "under pressure a block went to its owner, not to the backend";
  EXPECT_TRUE(backend.returned.count(ptr(4)));

  // An allocation in need polls: what completed goes to the backend, where it looks next.
  queue.close_device_batch({{ptr(5), 256, 0, &thread_a}}, nullptr);
  events.complete.insert(events.next_id - 1);
  EXPECT_EQ(queue.poll(FreeFenceQueue::Poller::allocation_in_need), 256u);
  EXPECT_EQ(owners.taken.size(), 2u) << "an allocation in need polled a block to its owner";
  EXPECT_TRUE(backend.returned.count(ptr(5)));

  // An allocation at the peak polls: what completed goes to its owners, whose lists it looks in next.
  queue.close_device_batch({{ptr(6), 256, 0, &thread_a}, {ptr(7), 256, 0, &thread_b}}, nullptr);
  events.complete.insert(events.next_id - 1);
  EXPECT_EQ(queue.poll(FreeFenceQueue::Poller::allocation_at_peak), 2u * 256);
  ASSERT_EQ(owners.taken.size(), 3u) << "an allocation at the peak polled a block to the backend";
  EXPECT_EQ(owners.taken[2].ptr, ptr(6));
  EXPECT_FALSE(backend.returned.count(ptr(6)));
}

// Every thread's open batch, given back at a transition to ordered, reaches the owners in one call (one
// look at the thread registry), and so do a batch and the batches merged into it.
TEST_F(FreeFenceQueueOwners, TheThreadsBatchesReachTheOwnersInOneCall) {
  int thread_a = 0, thread_b = 0, thread_c = 0;
  owners.taker = &thread_a;
  std::vector<std::vector<FreedBlock>> open = {{{ptr(1), 256, 0, &thread_a}, {ptr(2), 256, 0, &thread_a}},
                                               {{ptr(3), 256, 0, &thread_b}},
                                               {{ptr(4), 256, 0, &thread_c}}};
  EXPECT_EQ(give_back_device_batches(queue, std::move(open)), 4u * 256);
  EXPECT_EQ(owners.calls, 1);
  EXPECT_EQ(owners.taken.size(), 2u);
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(3), ptr(4)}));

  events.capturing = true;  // the batches wait, and merge
  queue.close_device_batch({{ptr(5), 256, 0, &thread_a}}, nullptr);
  queue.close_device_batch({{ptr(6), 256, 0, &thread_b}}, nullptr);
  queue.close_device_batch({{ptr(7), 256, 0, &thread_a}}, nullptr);
  ASSERT_EQ(queue.batches(), 1u);
  events.capturing = false;
  queue.poll();
  events.complete = {events.next_id - 1};
  EXPECT_EQ(queue.poll(), 3u * 256);
  EXPECT_EQ(owners.calls, 2);
  EXPECT_EQ(owners.taken.size(), 4u);
  EXPECT_TRUE(backend.returned.count(ptr(6)));
}

// A round of the polling thread's own small blocks goes to the backend (through its cache, in the
// router); its larger blocks go to their owner, itself, and so do its small ones once another thread's
// blocks complete in the same round (BlockOwners says why).
TEST_F(FreeFenceQueueOwners, ThePollersOwnSmallBlocksGoToItsListOnlyWhenOthersShareTheRound) {
  int poller = 0, other = 0;
  owners.caller = &poller;
  owners.taker = &poller;
  queue.close_device_batch({{ptr(1), 256, 0, &poller}, {ptr(2), 256, 0, &poller}}, nullptr);
  events.complete = {1};
  EXPECT_EQ(queue.poll(), 2u * 256);
  EXPECT_TRUE(owners.taken.empty()) << "a round of the poller's blocks alone skipped its cache";
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(1), ptr(2)}));

  queue.close_device_batch({{ptr(3), 256, 0, &poller}}, nullptr);
  queue.close_device_batch({{ptr(4), 256, 0, &other}}, nullptr);
  events.complete = {2, 3};
  queue.poll();
  ASSERT_EQ(owners.taken.size(), 1u) << "the poller's block went to the backend though another thread's shared the round";
  EXPECT_EQ(owners.taken[0].ptr, ptr(3));
  EXPECT_TRUE(backend.returned.count(ptr(4))) << "FakeOwners takes only the poller's blocks";

  // A round of its own with a block above kOwnBlockThroughCacheBytes: that one goes to its list.
  queue.close_device_batch({{ptr(5), 256, 0, &poller}, {ptr(6), kOwnBlockThroughCacheBytes + 512, 0, &poller},
                            {ptr(7), kOwnBlockThroughCacheBytes, 0, &poller}},
                           nullptr);
  events.complete = {4};
  queue.poll();
  ASSERT_EQ(owners.taken.size(), 2u) << "the poller's own large block went through its cache";
  EXPECT_EQ(owners.taken[1].ptr, ptr(6));
  EXPECT_TRUE(backend.returned.count(ptr(5)) && backend.returned.count(ptr(7)))
      << "the poller's own small blocks skipped its cache";
}

// A poll that may wait (an allocation at the peak or under pressure) waits for the thread recording
// fences; a plain poll returns at once.
TEST_F(FreeFenceQueueTest, APollThatMayWaitWaitsForTheRecordingThread) {
  std::atomic<bool> plain_returned{false}, waiting_returned{false};
  bool waited_for_the_recorder = false;
  std::thread other;
  events.while_recording = [&] {  // this thread holds the driver lock here
    other = std::thread([&] {
      EXPECT_EQ(queue.poll(), 0u);
      plain_returned = true;
      queue.poll(FreeFenceQueue::Poller::allocation_in_need);
      waiting_returned = true;
    });
    while (!plain_returned) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    waited_for_the_recorder = !waiting_returned;
  };
  queue.close_device_batch(blocks(1, 2), nullptr);
  other.join();
  EXPECT_TRUE(waited_for_the_recorder) << "the waiting poll returned while another thread recorded";
  EXPECT_EQ(events.device_fences, 1);
}

// The work turned ordered while another thread holds the driver lock (it records a fence): the open
// blocks go back at once, the queued batches through their fences, and nothing waits for that thread
// (16 threads with a stream each queued here, 36-47% of their time at 16 MiB on the H200).
TEST_F(FreeFenceQueueTest, WhileAnotherThreadRecordsTheOrderedTransitionGivesBackOnlyTheOpenBlocks) {
  std::atomic<bool> returned{false};
  bool returned_while_held = false;
  std::size_t given = 0;
  std::thread other;
  events.while_recording = [&] {  // this thread holds the driver lock here
    other = std::thread([&] {
      given = give_back_device_batches(queue, {blocks(40, 2)});
      returned = true;
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!returned && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    returned_while_held = returned;
  };
  queue.close_device_batch(blocks(1, 2), nullptr);
  other.join();
  EXPECT_TRUE(returned_while_held) << "the give-back waited for the thread recording a fence";
  EXPECT_EQ(given, 2u * 256);
  EXPECT_EQ(backend.returned, (std::set<void*>{ptr(40), ptr(41)}));
  EXPECT_EQ(queue.batches(), 1u);  // the batch being recorded waits for its fence
  events.complete = {1};
  EXPECT_EQ(queue.poll(), 2u * 256);
}

// An allocation in need that waited for another thread's poll asks the driver nothing more: that poll
// took what was complete (many allocations at the peak at once each asked in turn before).
TEST_F(FreeFenceQueueTest, AnAllocationInNeedThatWaitedForAPollAsksNothingMore) {
  events.capturing = true;
  queue.close_device_batch(blocks(1, 2), nullptr);  // queued, not recorded (a capture runs)
  events.capturing = false;
  std::atomic<bool> started{false};
  std::size_t other_given = 1;
  std::thread other;
  events.while_recording = [&] {  // inside the poll below, which holds the driver lock
    other = std::thread([&] {
      started = true;
      other_given = queue.poll(FreeFenceQueue::Poller::allocation_in_need);
    });
    while (!started) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // it finds the lock held and waits
  };
  const int queries_before = events.queries;
  EXPECT_EQ(queue.poll(), 0u);  // records the fence; not complete yet
  other.join();
  EXPECT_EQ(other_given, 0u);
  EXPECT_EQ(events.queries - queries_before, 1) << "the waiting allocation asked the fence again";
  EXPECT_EQ(events.device_fences, 1);
}

// A stream's drained list (its blocks all reused on it) closes empty when its stream is destroyed: an
// event recorded for it was never released, one CUevent lost per such stream.
TEST_F(FreeFenceQueueTest, EmptyBatchesRecordNothing) {
  queue.close_device_batch({}, nullptr);
  queue.close_stream_batch({}, nullptr, 7);
  EXPECT_EQ(events.device_fences, 0);
  EXPECT_EQ(events.stream_fences, 0) << "an event recorded for no block, and lost with the batch";
  EXPECT_EQ(queue.batches(), 0u);
}

}  // namespace
}  // namespace gpushim
