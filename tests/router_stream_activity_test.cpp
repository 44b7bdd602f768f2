// The free-safety rule follows the streams that carry work (router/stream_activity.h), end to end:
// libgpushim.so over the fake driver, each test in its own process (tests/router_e2e.cmake). The fake
// GPU holds every event recorded while fake_cuda_hold_gpu(1) is on, so "the GPU has not finished" is a
// state a test can keep, and a block handed out again while it holds is a reuse the GPU could race.
// fake_cuda_hold_stream(stream, 1) holds one stream only (and what waits for it), so a test can keep
// the legacy stream behind while a side stream finishes.
#include <cuda.h>
#include <sys/wait.h>
#include <unistd.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "stream_activity_support.h"

namespace {

using namespace stream_activity_support;

using StreamActivity = FakeGpuStreams;

TEST_F(StreamActivity, CreatingStreamsDoesNotEndReuseAtOnce) {
  CUstream nonblocking = nullptr, blocking = nullptr;
  ASSERT_EQ(cuStreamCreate(&nonblocking, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&blocking, 0), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  launch_on(CU_STREAM_LEGACY);  // the legacy stream is the order itself
  const int records = fake_cuda_calls("cuEventRecord");
  EXPECT_TRUE(reused_at_once(fresh_block()));
  EXPECT_EQ(fake_cuda_calls("cuEventRecord"), records) << "no fence while only the legacy stream works";
  EXPECT_EQ(cuStreamDestroy(nonblocking), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(blocking), CUDA_SUCCESS);
}

// The deliberately unsafe reuse: a block whose last user is queued on a non-blocking stream that the GPU
// has not finished. Handing it out again would let new work race that kernel. With the rule broken
// (every free reused at once), this test fails.
TEST_F(StreamActivity, WorkOnANonBlockingStreamFencesFreesUntilItsWorkIsDone) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  const CUdeviceptr used = fresh_block();
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  ASSERT_EQ(cuMemsetD8Async(used, 0x5a, kBlock, s), CUDA_SUCCESS);  // its last user, still queued
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits) << "joined to a legacy stream that had no work left";
  EXPECT_FALSE(reused_at_once(used)) << "a block the GPU may still touch was handed out again";
  launch_on(s);  // active already
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits);
  churn();
  CUdeviceptr other = fresh_block();
  EXPECT_FALSE(reused_at_once(other)) << "still fenced while the GPU holds the stream's work";

  fake_cuda_hold_gpu(0);  // the GPU catches up: a probe finds the stream idle, reuse at once returns
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block()));
  // Work again: active again, fenced again.
  fake_cuda_hold_gpu(1);
  const CUdeviceptr again = fresh_block();
  launch_on(s);
  EXPECT_FALSE(reused_at_once(again));
  fake_cuda_hold_gpu(0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A block used on `s` while the fake GPU was held, freed then (fenced: into this thread's open batch);
// the GPU is let go after the free, so the stream's work is done but nothing has polled since.
CUdeviceptr free_while_the_stream_works(CUstream s) {
  fake_cuda_hold_gpu(1);
  const CUdeviceptr used = fresh_block();
  EXPECT_EQ(cuMemsetD8Async(used, 3, kBlock, s), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(used), CUDA_SUCCESS);
  fake_cuda_hold_gpu(0);
  return used;
}

// Blocks fenced while a stream worked come back once it has stopped, without memory pressure: the
// thread's half-full batch is closed when the work is found ordered again (it would never fill now).
TEST_F(StreamActivity, BlocksFencedWhileAStreamWorkedComeBackWhenItStops) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  const CUdeviceptr used = free_while_the_stream_works(s);
  churn();  // a probe finds the stream idle; later frees are reused at once
  EXPECT_TRUE(handed_out_again(used, 400)) << "a block fenced while the stream worked never came back";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A thread that frees while a side stream works, then stops freeing, kept its open batch until its next
// free. A context synchronization (the program waits for the device) finds the streams idle: the work
// turns ordered there and the batch comes back (router::after_context_synchronize), so the thread's next
// allocations get its blocks without a free in between. A poll may only record the stream's probe and
// the next read it, and the hook polls at most once a millisecond: two synchronizations, 2 ms apart.
TEST_F(StreamActivity, AContextSynchronizeGivesBackTheOpenBatchOfAThreadThatStoppedFreeing) {
  if (backend() == "passthrough") GTEST_SKIP() << "passthrough's frees are the driver's: no batch";
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  const CUdeviceptr used = free_while_the_stream_works(s);
  for (int i = 0; i < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
  }
  // Allocations until it comes back (handed_out_again frees them only after): no free polls anything.
  EXPECT_TRUE(handed_out_again(used, 8)) << "the open batch stayed through the context synchronizations";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// The poll that finds the side stream idle gives the blocks fenced meanwhile straight back: no fence is
// recorded for them, and they do not wait for the legacy stream's backlog (docs/free-safety.md, "When
// the work turns ordered again"). Before, that poll closed the open batch with the device-wide fence: an
// event on the legacy stream (held here, so the block never came back) and on the side stream.
TEST_F(StreamActivity, TheTransitionToOrderedGivesBackFencedBlocksUnfenced) {
  CUstream s = active_side_stream();  // joined while the legacy stream had caught up
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  launch_on(CU_STREAM_LEGACY);
  fake_cuda_hold_stream(s, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 9, kBlock, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFree(used), CUDA_SUCCESS);  // fenced: into this thread's open batch
  EXPECT_FALSE(handed_out_again(used, 100)) << "handed out while the side stream's work on it is queued";

  fake_cuda_hold_stream(s, 0);  // the side stream is done; the legacy stream is still behind
  const int records = fake_cuda_calls("cuEventRecord");
  churn();  // frees poll: the side stream's probe (recorded above) has completed
  EXPECT_TRUE(handed_out_again(used, 400)) << "the block waited for the legacy stream, which never touched it";
  EXPECT_EQ(fake_cuda_calls("cuEventRecord"), records) << "the transition recorded a fence";
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// The legacy stream and one blocking stream order each other both ways; a second blocking stream with
// work does not order against the first.
TEST_F(StreamActivity, OneBlockingStreamKeepsTheOrderASecondEndsIt) {
  CUstream first = nullptr, second = nullptr;
  ASSERT_EQ(cuStreamCreate(&first, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&second, 0), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  launch_on(first);
  EXPECT_TRUE(reused_at_once(fresh_block())) << "legacy + one blocking stream are totally ordered";
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(second);
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits + 1) << "the second waits for the first";
  EXPECT_FALSE(reused_at_once(fresh_block()));
  fake_cuda_hold_gpu(0);
  EXPECT_EQ(cuStreamDestroy(first), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(second), CUDA_SUCCESS);
}

// A destroyed stream's queued work still runs: its blocks stay fenced until that work is done.
TEST_F(StreamActivity, ADestroyedStreamCountsUntilItsWorkIsDone) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, s), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
  EXPECT_FALSE(reused_at_once(used));
  churn();
  EXPECT_FALSE(reused_at_once(fresh_block()));
  fake_cuda_hold_gpu(0);
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block()));
}

// Work captured into a graph does not run at capture: the capturing stream is not joined (a wait on an
// outside event would break the capture) and does not become active.
TEST_F(StreamActivity, CapturedWorkIsNotWork) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(s);
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits);
  CUgraph graph = nullptr;
  cuStreamEndCapture(s, &graph);
  fake_cuda_hold_gpu(1);
  EXPECT_TRUE(reused_at_once(fresh_block()));
  fake_cuda_hold_gpu(0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Work spread over many streams, each block freed right after its last user was queued: no block handed
// out is one that queued work may still touch (the held fake GPU keeps all of it pending throughout).
TEST_F(StreamActivity, WorkOnManyStreamsNeverGetsABusyBlock) {
  constexpr int kThreads = 4;
  std::vector<CUstream> streams(kThreads);
  for (CUstream& s : streams) ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  std::set<CUdeviceptr> busy;  // blocks whose last user is queued on a stream
  use_and_free_in_rounds(streams, 50, &busy);
  fake_cuda_hold_gpu(0);
  for (CUstream s : streams) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A batch closed while a side stream works is fenced by that stream's own event, not by the legacy
// stream's backlog (the CPU runs far ahead of the legacy stream in real programs): a block whose last
// user is on the side stream is never handed out while that work is queued, and comes back as soon as it
// is done, with the legacy stream still behind. The side stream's later work is made to wait for the
// legacy work issued before the fence, which is what makes leaving the legacy stream out exact.
TEST_F(StreamActivity, ABlockUsedOnASideStreamComesBackWhenThatStreamIsDoneWhileLegacyIsBehind) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  launch_on(s);  // active (joined to the legacy stream while it had caught up)
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  fake_cuda_hold_stream(s, 1);
  launch_on(CU_STREAM_LEGACY);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 0x5a, kBlock, s), CUDA_SUCCESS);  // its last user, still queued
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  free_and_close_batch(used);
  EXPECT_GT(fake_cuda_calls("cuStreamWaitEvent"), waits)
      << "the side stream's later work must wait for the legacy work issued before the fence";
  EXPECT_FALSE(handed_out_again(used, 300)) << "a block the side stream's queued work may touch was handed out";

  fake_cuda_hold_stream(s, 0);  // the side stream is done; the legacy stream is still behind
  churn();                      // frees poll the fences
  EXPECT_TRUE(handed_out_again(used, 400)) << "the block waited for the legacy stream, which never touched it";

  // Work queued on the side stream from now on comes after the legacy work queued before the fence.
  CUevent later = nullptr;
  ASSERT_EQ(cuEventCreate(&later, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
  ASSERT_EQ(cuEventRecord(later, s), CUDA_SUCCESS);
  EXPECT_EQ(cuEventQuery(later), CUDA_ERROR_NOT_READY) << "the side stream does not wait for the legacy stream";
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  EXPECT_EQ(cuEventQuery(later), CUDA_SUCCESS);
  EXPECT_EQ(cuEventDestroy(later), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// With the legacy stream caught up there is no earlier legacy work to order the side stream after: the
// fence is the side stream's event alone, with no wait queued on it.
TEST_F(StreamActivity, ABatchFencedWhileLegacyIsIdleQueuesNoWait) {
  const CUstream s = active_side_stream();
  fake_cuda_hold_stream(s, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, s), CUDA_SUCCESS);
  expect_fenced_without_a_wait(used, [s] { fake_cuda_hold_stream(s, 0); },
                               "a wait for a legacy stream that had no work");
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A stream that queued nothing since its last fence event is covered by that event: the next batch's
// fence takes it (router/cuda_fence_events.h, stream fences) and records nothing new. Both batches still
// wait for the stream's work.
TEST_F(StreamActivity, AFenceSharesTheEventOfAStreamThatQueuedNothingSince) {
  const CUstream s = active_side_stream();
  fake_cuda_hold_stream(s, 1);
  const CUdeviceptr first = fresh_block();
  const CUdeviceptr second = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(first, 1, kBlock, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemsetD8Async(second, 1, kBlock, s), CUDA_SUCCESS);
  free_and_close_batch(first);
  const int records = fake_cuda_calls("cuEventRecord");
  free_and_close_batch(second);
  EXPECT_EQ(fake_cuda_calls("cuEventRecord"), records) << "a new event on a stream that queued nothing since";
  EXPECT_FALSE(handed_out_again(first, 300));
  EXPECT_FALSE(handed_out_again(second, 300));
  fake_cuda_hold_stream(s, 0);
  churn();
  std::vector<CUdeviceptr> blocks;  // all kept: each allocation gets a block not seen before
  std::set<CUdeviceptr> seen;
  for (int i = 0; i < 2000 && !(seen.count(first) && seen.count(second)); ++i) {
    blocks.push_back(fresh_block());
    seen.insert(blocks.back());
  }
  EXPECT_TRUE(seen.count(first) && seen.count(second)) << "blocks of the shared fence did not come back";
  for (CUdeviceptr p : blocks) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// GPUSHIM_FENCE_DELAY (router/free_fence_queue.h): once the work has turned ordered, a batch closed while
// a side stream works waits before its fence is recorded; the stream going idle first gives its blocks
// back with no fence at all. Runs as router_stream_activity_fence_delay (a delay of 1 s, which the fake
// GPU's pace cannot outlast).
TEST_F(StreamActivity, ABatchClosedWhileASideStreamWorksWaitsTheFenceDelay) {
  if (!std::getenv("E2E_FENCE_DELAY")) GTEST_SKIP() << "runs as router_stream_activity_fence_delay";
  const CUstream s = active_side_stream();
  churn();  // the side stream's work is done: the work turns ordered
  ASSERT_TRUE(reused_at_once(fresh_block()));
  fake_cuda_hold_stream(s, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, s), CUDA_SUCCESS);
  const int records = fake_cuda_calls("cuEventRecord");
  free_and_close_batch(used);
  EXPECT_EQ(fake_cuda_calls("cuEventRecord"), records) << "a fence recorded before the delay passed";
  EXPECT_FALSE(handed_out_again(used, 300));
  fake_cuda_hold_stream(s, 0);
  churn();
  EXPECT_TRUE(handed_out_again(used, 400));
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Several side streams at once, each held: no block whose last user is queued on a held stream is
// handed out, and once they are all done their blocks come back while the legacy stream is behind.
TEST_F(StreamActivity, BlocksUsedOnHeldSideStreamsAreNeverHandedOut) {
  constexpr int kStreams = 3;
  std::vector<CUstream> streams(kStreams);
  for (CUstream& s : streams) {
    ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    launch_on(s);
  }
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  for (CUstream s : streams) fake_cuda_hold_stream(s, 1);
  std::set<CUdeviceptr> busy;  // last user queued on a held stream
  use_and_free_in_rounds(streams, 200, &busy);
  for (CUstream s : streams) fake_cuda_hold_stream(s, 0);
  churn();
  std::vector<CUdeviceptr> blocks;
  bool came_back = false;
  for (int i = 0; i < 1000 && !came_back; ++i) {
    blocks.push_back(fresh_block());
    came_back = busy.count(blocks.back()) != 0;
  }
  EXPECT_TRUE(came_back) << "blocks of finished side streams waited for the legacy stream";
  for (CUdeviceptr p : blocks) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  for (CUstream s : streams) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Work on a per-thread default stream cannot be followed (router/stream_activity.h): the active streams
// no longer name every stream that may touch a block, so batches keep the device-wide fence, legacy
// stream included.
TEST_F(StreamActivity, AfterPerThreadStreamWorkBatchesWaitForTheLegacyStream) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  launch_on(s);
  launch_on(CU_STREAM_PER_THREAD);
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  const CUdeviceptr used = block_fenced_after_work_on(s);
  EXPECT_FALSE(handed_out_again(used, 300)) << "the legacy stream (covering per-thread streams) was not fenced";
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  free_and_close_batch(fresh_block());  // every free is fenced for good now: a close polls the fences
  EXPECT_TRUE(handed_out_again(used, 400));
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A destroyed stream that is still counted is not among the streams a batch fence can record on: while
// one exists, batches keep the device-wide fence.
TEST_F(StreamActivity, WhileADestroyedStreamIsCountedBatchesWaitForTheLegacyStream) {
  CUstream s = active_side_stream(), gone = active_side_stream();
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  fake_cuda_hold_stream(gone, 1);
  ASSERT_EQ(cuStreamDestroy(gone), CUDA_SUCCESS);  // its queued work still runs: counted until done
  const int dead_records = fake_cuda_records_on_destroyed_streams();
  const CUdeviceptr used = block_fenced_after_work_on(s);
  EXPECT_EQ(fake_cuda_records_on_destroyed_streams(), dead_records) << "a fence recorded on a destroyed stream";
  EXPECT_FALSE(handed_out_again(used, 300)) << "the device-wide fence was not kept";
  fake_cuda_hold_gpu(0);
  churn();
  EXPECT_TRUE(handed_out_again(used, 400));
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Batch fences record on the active streams while other threads destroy theirs: no record may reach a
// stream after its destroy (in the driver, a use after free; the H100 crashed in cuEventRecord when
// such a race existed). The walk holds the activity lock, which untrack_stream takes before the real
// destroy. Threads each create a stream, work on it, free enough to close batches and destroy it,
// while this thread keeps the work unordered in bursts (a held stream, released now and then so the
// fences complete and memory comes back), so closes walk the others' streams. A walk outside the lock
// without a destroy guard (tried on a branch in the eleventh session) failed this test in 2-3 of the 4
// backends at every run.
TEST_F(StreamActivity, StreamsDestroyedWhileFencesAreRecordedGetNoRecord) {
  CUstream anchor = nullptr;
  ASSERT_EQ(cuStreamCreate(&anchor, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  const int dead_records = fake_cuda_records_on_destroyed_streams();
  constexpr std::size_t kLarge = 4u << 20;  // 16 frees close a batch
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < 6; ++t) {
    workers.emplace_back([&stop] {
      while (!stop.load()) {
        CUstream s = nullptr;
        ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
        launch_on(s);
        for (int i = 0; i < 32; ++i) {
          // The buddy backend's fixed pool may run out while the anchor holds every fence: not this
          // test's concern.
          CUdeviceptr p = 0;
          const CUresult result = cuMemAlloc(&p, kLarge);
          ASSERT_TRUE(result == CUDA_SUCCESS || result == CUDA_ERROR_OUT_OF_MEMORY) << result;
          if (result == CUDA_SUCCESS) {
            ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
          }
        }
        ASSERT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
      }
    });
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(600);
  while (std::chrono::steady_clock::now() < end) {
    fake_cuda_hold_stream(anchor, 1);
    launch_on(anchor);
    std::this_thread::sleep_for(std::chrono::milliseconds(4));
    fake_cuda_hold_stream(anchor, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stop = true;
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(fake_cuda_records_on_destroyed_streams(), dead_records) << "a fence recorded on a destroyed stream";
  EXPECT_EQ(cuStreamDestroy(anchor), CUDA_SUCCESS);
}

// A block whose last user is queued on a stream the program has since destroyed: that work still runs,
// no event can be recorded on the stream any more, and it is in no list of streams. The fence makes the
// legacy stream wait for the probe recorded at the destroy before its own event.
TEST_F(StreamActivity, WorkQueuedOnADestroyedStreamKeepsItsBlocks) {
  CUstream s = active_side_stream(), gone = active_side_stream();
  fake_cuda_hold_stream(gone, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, gone), CUDA_SUCCESS);  // its last user
  ASSERT_EQ(cuStreamDestroy(gone), CUDA_SUCCESS);
  free_and_close_batch(used);
  churn();
  EXPECT_FALSE(handed_out_again(used, 300)) << "a block the destroyed stream's queued work may touch was handed out";
  fake_cuda_hold_stream(gone, 0);
  free_and_close_batch(fresh_block());
  EXPECT_TRUE(handed_out_again(used, 400));
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Blocking streams already wait for the legacy stream's earlier work: a batch fenced while two of them
// work covers each with an event and queues no wait.
TEST_F(StreamActivity, BlockingStreamsAreFencedWithoutWaits) {
  CUstream first = nullptr, second = nullptr;
  ASSERT_EQ(cuStreamCreate(&first, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&second, 0), CUDA_SUCCESS);
  launch_on(first);
  // Both busy: were `second` found idle, one blocking stream would be left, which is ordered again, and
  // `used` would rightly be reused at once (a later user on another stream is joined to `first`).
  fake_cuda_hold_stream(first, 1);
  fake_cuda_hold_stream(second, 1);
  launch_on(second);  // two blocking streams: no longer totally ordered
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, first), CUDA_SUCCESS);
  expect_fenced_without_a_wait(used, [first] { fake_cuda_hold_stream(first, 0); },
                               "a blocking stream was made to wait");
  fake_cuda_hold_stream(second, 0);
  EXPECT_EQ(cuStreamDestroy(first), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(second), CUDA_SUCCESS);
}

// A side stream whose work is done is found idle by the first poll of stream activity (cuStreamQuery),
// not only by a second poll that reads a probe recorded by the first: frees take effect at once sooner.
TEST_F(StreamActivity, AnIdleStreamIsFoundIdleByTheFirstPoll) {
  const CUstream s = active_side_stream();  // its work is done at once: the fake GPU is not held
  const int queries = fake_cuda_calls("cuStreamQuery") + fake_cuda_calls("cuEventQuery");
  for (int i = 0; i < 8; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // fenced: one poll
  if (word_probes()) {
    EXPECT_EQ(fake_cuda_calls("cuStreamQuery") + fake_cuda_calls("cuEventQuery"), queries)
        << "the poll asked the driver, not the probe's word";
  } else {
    EXPECT_GT(fake_cuda_calls("cuStreamQuery") + fake_cuda_calls("cuEventQuery"), queries);
  }
  EXPECT_TRUE(reused_at_once(fresh_block())) << "frees stayed fenced after the stream's work was done";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Two active side streams: `busy`, whose work is held, and `idle`, whose work is done and which the polls
// of a churn have found idle.
std::pair<CUstream, CUstream> busy_and_idle_streams() {
  const CUstream busy = active_side_stream();
  fake_cuda_hold_stream(busy, 1);
  launch_on(busy);
  const CUstream idle = active_side_stream();  // its work is done at once
  churn();
  return {busy, idle};
}

// A stream found idle while another still works stays active: its leaving alone would order nothing,
// and its next launch would pay a join (a record and a wait) under the activity lock. Once every stream
// is idle they leave together, and frees are reused at once again.
TEST_F(StreamActivity, AnIdleStreamStaysActiveWhileAnotherWorks) {
  const auto [busy, idle] = busy_and_idle_streams();
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(idle);
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits) << "the idle stream left while the other worked";
  EXPECT_FALSE(reused_at_once(fresh_block())) << "reused while the busy stream worked";
  fake_cuda_hold_stream(busy, 0);
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "the streams did not leave together once both were idle";
  for (CUstream s : {busy, idle}) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A stream found idle while another works stays active; its next launch queues its probe itself, so the
// polls in the frees after it only read that probe: no cuStreamQuery and no probe under the activity
// lock, which every activation waits for (16 threads with a stream each, seventeenth session).
TEST_F(StreamActivity, AStreamFoundIdleWhileAnotherWorksGetsItsProbeAtItsNextLaunch) {
  const auto [busy, idle] = busy_and_idle_streams();
  fake_cuda_hold_stream(idle, 1);
  const int records = probe_records();
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(idle);
  EXPECT_EQ(probe_records(), records + 1) << "the launch queued no probe";
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits) << "the idle stream left while the other worked";
  const int stream_queries = fake_cuda_calls("cuStreamQuery");
  for (int i = 0; i < 16; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // fenced: two polls
  EXPECT_EQ(fake_cuda_calls("cuStreamQuery"), stream_queries) << "a poll asked the stream, not its probe";
  EXPECT_EQ(probe_records(), records + 1) << "a poll queued a probe in a free";
  // The probe still tells: once both streams are done, frees are reused at once again.
  fake_cuda_hold_stream(idle, 0);
  fake_cuda_hold_stream(busy, 0);
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "the streams did not leave once both were idle";
  for (CUstream s : {busy, idle}) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// More work after the probe makes it stale: the next poll asks the stream itself instead of waiting a
// poll round for a probe that cannot prove it idle.
TEST_F(StreamActivity, AProbeWithWorkQueuedAfterItIsNotWaitedFor) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 1);
  launch_on(s);  // active, its probe recorded (held)
  launch_on(s);  // queued after the probe
  fake_cuda_hold_stream(s, 0);
  const int stream_queries = fake_cuda_calls("cuStreamQuery");
  for (int i = 0; i < 8; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // fenced: one poll
  EXPECT_GT(fake_cuda_calls("cuStreamQuery"), stream_queries);
  EXPECT_TRUE(reused_at_once(fresh_block())) << "one poll did not find the idle stream";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A stale probe that has not landed says what a query or a fresh probe would: the stream is busy. The
// polls wait for it without a driver call, so a thread that launches between every pair no longer
// pays a query and a probe in every poll; once it has landed, the stream is asked (above).
TEST_F(StreamActivity, AStaleProbeThatHasNotLandedCostsAPollNoQueryAndNoNewProbe) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 1);
  launch_on(s);  // active, its probe queued (held)
  launch_on(s);  // queued after the probe: stale
  const int stream_queries = fake_cuda_calls("cuStreamQuery");
  const int records = probe_records();
  for (int i = 0; i < 16; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // fenced: two polls
  EXPECT_EQ(fake_cuda_calls("cuStreamQuery"), stream_queries) << "a poll asked a stream still behind its probe";
  EXPECT_EQ(probe_records(), records) << "a poll queued a probe behind one that had not landed";
  EXPECT_FALSE(reused_at_once(fresh_block())) << "reused while the stream's work was held";
  fake_cuda_hold_stream(s, 0);
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "frees stayed fenced after the stream's work was done";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A free of a large block asks whether the work is ordered again before fencing it, and only asks: a
// busy stream gets no probe there (the batch's own polls queue it). With a launch between every pair
// of 16 MiB, each free queued one that the next launch made stale.
TEST_F(StreamActivity, AFreeOfALargeBlockOnlyAsksABusyStream) {
  constexpr std::size_t kBig = std::size_t{16} << 20;
  const CUstream s = active_side_stream();  // its launch's probe has landed: the fake GPU was not held
  fake_cuda_hold_stream(s, 1);
  launch_on(s);  // after the probe, held: the probe is stale and the stream busy
  CUdeviceptr big = 0;
  ASSERT_EQ(cuMemAlloc(&big, kBig), CUDA_SUCCESS);
  const int stream_queries = fake_cuda_calls("cuStreamQuery");
  const int records = probe_records();
  ASSERT_EQ(cuMemFree(big), CUDA_SUCCESS);
  EXPECT_GT(fake_cuda_calls("cuStreamQuery"), stream_queries) << "the large free did not ask the stream";
  EXPECT_EQ(probe_records(), records) << "the large free queued a probe on a busy stream";
  CUdeviceptr again = 0;
  ASSERT_EQ(cuMemAlloc(&again, kBig), CUDA_SUCCESS);
  EXPECT_NE(again, big) << "a block the held stream may still use was handed out";
  EXPECT_EQ(cuMemFree(again), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 0);
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "frees stayed fenced after the stream's work was done";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// With a stream per thread many streams are active: one poll asks at most 4 of them (driver calls), the
// next poll the others first, so a free never pays for every stream and every stream is still asked.
TEST_F(StreamActivity, APollAsksAFewStreamsAndTheNextPollTheOthers) {
  std::vector<CUstream> streams(6);
  for (CUstream& s : streams) {
    ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    fake_cuda_hold_stream(s, 1);
    launch_on(s);
  }
  auto driver_calls = [] {
    return fake_cuda_calls("cuEventQuery") + fake_cuda_calls("cuStreamQuery") + fake_cuda_calls("cuEventRecord");
  };
  const int before = driver_calls();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // fenced: one poll
  if (word_probes()) {
    // Every stream got its probe at its launch: the poll reads six words and asks the driver nothing.
    EXPECT_EQ(driver_calls(), before) << "a poll asked the driver while every probe was a word";
  } else {
    EXPECT_GT(driver_calls(), before);
    EXPECT_LE(driver_calls(), before + 4) << "one free asked every active stream";
  }
  for (CUstream s : streams) fake_cuda_hold_stream(s, 0);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // two more polls
  EXPECT_TRUE(reused_at_once(fresh_block())) << "a stream was never asked again";
  for (CUstream s : streams) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A stream that starts work waits for the legacy stream and the active blocking streams, not for the
// other active non-blocking streams: no block reused at once can have been last used there (a free
// while one of them was active was fenced). Still exact: a block last used on the busy non-blocking
// stream is not handed out to the new one's work.
TEST_F(StreamActivity, AStreamThatStartsWorkIsNotJoinedToActiveNonBlockingStreams) {
  CUstream busy = nullptr, blocking = nullptr, starting = nullptr;
  ASSERT_EQ(cuStreamCreate(&busy, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&blocking, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&starting, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_stream(busy, 1);
  fake_cuda_hold_stream(blocking, 1);
  launch_on(busy);
  launch_on(blocking);
  launch_on(CU_STREAM_LEGACY);  // behind the held blocking stream: legacy work left to wait for
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, busy), CUDA_SUCCESS);
  free_and_close_batch(used);
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(starting);
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits + 2) << "joined to the legacy stream and the blocking one only";
  EXPECT_FALSE(handed_out_again(used, 300)) << "a block the busy stream's queued work may touch was handed out";
  fake_cuda_hold_stream(busy, 0);
  fake_cuda_hold_stream(blocking, 0);
  churn();
  EXPECT_TRUE(handed_out_again(used, 400));
  for (CUstream s : {busy, blocking, starting}) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A fenced block comes back to the thread that freed it, whichever thread polled its fence: its
// allocations of that size take it (router/returned_blocks.h). Given to the polling thread, it would sit in
// that thread's cache (kept alive here, so its cache is not flushed to a shared depot) and this thread
// would never see it again.
TEST_F(StreamActivity, AFencedBlockGoesBackToTheThreadThatFreedIt) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  const CUdeviceptr used = block_freed_while_busy_on(s);
  std::atomic<bool> checked{false};
  std::atomic<bool> polled{false};
  std::thread poller([&] {
    churn();  // finds the stream idle and gives every held block back
    polled = true;
    while (!checked) std::this_thread::yield();
  });
  while (!polled) std::this_thread::yield();
  EXPECT_TRUE(handed_out_again(used, 400)) << "the block went to the polling thread, not to its freeing thread";
  checked = true;
  poller.join();
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// While a thread's returned list holds blocks, a block it frees while the work is ordered joins that
// list rather than the backend: its next allocation takes the block it just freed (newest first), as it
// would with no list at all. Given to the backend, the thread's frees filled its cache and overflowed
// into the arena's lock while its allocations drained the list (router/returned_blocks.h). Fails when
// the free goes to the backend: the next allocation then takes an older block from the list.
TEST_F(StreamActivity, AFreeWhileOrderedJoinsTheThreadsReturnedList) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  block_freed_while_busy_on(s);
  std::thread poller([] { churn(); });  // finds s idle: this thread's batch comes back to its list
  poller.join();
  const CUdeviceptr b = fresh_block();  // from the list
  ASSERT_EQ(cuMemFree(b), CUDA_SUCCESS);  // the work is ordered: reusable at once
  const CUdeviceptr c = fresh_block();
  EXPECT_EQ(c, b) << "the block freed while the work was ordered was not the next one handed out";
  EXPECT_EQ(cuMemFree(c), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A forked child starts with none of the parent's devices: blocks returned to the forking thread before
// the fork are the parent's, and the child's allocations must not hand them out (router/after_fork.cpp).
TEST_F(StreamActivity, AForkedChildDoesNotHandOutTheParentsReturnedBlocks) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  const CUdeviceptr used = block_freed_while_busy_on(s);
  std::thread poller([] { churn(); });  // returns this thread's blocks to it, then exits
  poller.join();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(handed_out_again(used, 400) ? 1 : 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child handed out a block the parent had returned to this thread";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A stream that starts work waits for the legacy stream only while the legacy stream has work left:
// then that work may be the last user of a block reused at once, which the new stream's work may touch
// next. With the legacy stream caught up there is nothing to wait for, and the launch makes no record
// and no wait (it made both under the activity lock, which 16 threads with a stream each queued for).
// Fails if the join is skipped while the legacy stream has work (the stream's work would not wait).
TEST_F(StreamActivity, AStreamThatStartsWorkWaitsForTheLegacyStreamOnlyWhileItHasWork) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  int waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(s);
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits) << "waited for a legacy stream that had no work";
  churn();  // s is found idle: the work is ordered again
  ASSERT_TRUE(reused_at_once(fresh_block()));

  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, CU_STREAM_LEGACY), CUDA_SUCCESS);  // its last user, queued
  EXPECT_TRUE(reused_at_once(used)) << "only the legacy stream works: its next user is ordered after it";
  waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(s);  // may touch `used` next
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits + 1) << "not joined to the legacy stream's work";
  EXPECT_EQ(cuStreamQuery(s), CUDA_ERROR_NOT_READY) << "the stream's new work does not wait for the legacy work";
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  EXPECT_EQ(cuStreamQuery(s), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Once a join found the legacy stream done, streams that start work while the work has stayed unordered
// since do not ask again: every block reused at once was freed before that join's count, so its last
// user was done when the join asked (router/stream_activity.cpp, become_active). 16 threads with a
// stream each paid a cuStreamQuery per launch for it. Legacy work queued after that join does not make
// the next join ask: its blocks' frees read "unordered" and were fenced. Once the work has been ordered
// again, the next join asks, and waits while the legacy stream has work. Fails if every join asks, and
// (second half) if the question is skipped across a transition to ordered: the new work would not wait.
TEST_F(StreamActivity, StreamsThatStartWorkWhileTheWorkStaysUnorderedAskTheLegacyStreamOnce) {
  const std::pair<CUstream, CUstream> streams = two_idle_streams();
  const CUstream a = streams.first, b = streams.second;
  launch_on(CU_STREAM_LEGACY);  // legacy work not known done: the first join must ask
  fake_cuda_hold_stream(a, 1);
  int queries = fake_cuda_calls("cuStreamQuery");
  launch_on(a);  // joined: the legacy stream is done; `a` stays busy, so the work stays unordered
  EXPECT_EQ(fake_cuda_calls("cuStreamQuery"), queries + 1) << "the first join did not ask the legacy stream";
  launch_on(CU_STREAM_LEGACY);  // not known done, but queued while the work was unordered
  queries = fake_cuda_calls("cuStreamQuery");
  launch_on(b);
  EXPECT_EQ(fake_cuda_calls("cuStreamQuery"), queries) << "asked again while the work stayed unordered";

  fake_cuda_hold_stream(a, 0);
  churn();  // both found idle: ordered again
  ASSERT_TRUE(reused_at_once(fresh_block()));
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, CU_STREAM_LEGACY), CUDA_SUCCESS);  // its last user, queued
  EXPECT_TRUE(reused_at_once(used));
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  launch_on(b);  // may touch `used` next
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits + 1) << "not joined to the legacy work once ordered again";
  EXPECT_EQ(cuStreamQuery(b), CUDA_ERROR_NOT_READY) << "the stream's new work does not wait for the legacy work";
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  EXPECT_EQ(cuStreamQuery(b), CUDA_SUCCESS);
  for (CUstream s : {a, b}) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A stream that starts work asks the legacy stream nothing while every legacy submission begun so far is
// known done (counted as begun, and found done by an earlier question), even across transitions to
// ordered: a block reused at once had its last legacy user begun before its free. 16 threads with a
// stream each, a launch every 1,024 pairs, turned ordered between most launches and asked at each
// activation (router/stream_activity.cpp, become_active). Fails if a join after a transition asks
// anyway; AStreamThatStartsWorkWaitsForTheLegacyStreamOnlyWhileItHasWork fails if legacy work begun
// since is not asked about. Where legacy submissions are not counted (no solo, no marked batches), every
// join after a transition asks, as before.
TEST_F(StreamActivity, AStreamThatStartsWorkAsksNothingWhileEveryLegacySubmissionIsKnownDone) {
  const int asks = legacy_submissions_counted() ? 0 : 1;
  const std::pair<CUstream, CUstream> streams = two_idle_streams();
  const CUstream a = streams.first, b = streams.second;
  launch_on(CU_STREAM_LEGACY);
  int queries = fake_cuda_calls("cuStreamQuery");
  launch_on(a);  // asks: the legacy launch above is not known done yet
  EXPECT_EQ(fake_cuda_calls("cuStreamQuery"), queries + 1) << "the first join did not ask the legacy stream";
  for (int round = 0; round < 3; ++round) {
    churn();  // `a` found idle: the work turns ordered (a new epoch)
    ASSERT_TRUE(reused_at_once(fresh_block())) << "round " << round;
    queries = fake_cuda_calls("cuStreamQuery");
    launch_on(round % 2 ? a : b);
    EXPECT_EQ(fake_cuda_calls("cuStreamQuery"), queries + asks) << "round " << round << ": asked about legacy work known done";
  }
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "the streams never went idle again";
  for (CUstream s : {a, b}) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A stream that starts work asks whether the legacy stream is done without holding the activity lock:
// with a stream per thread, 16 threads queued for that lock while each activation's cuStreamQuery ran
// (66 us an activation at 256 B on the H200). Two streams starting work at once both reach the question
// (fails while it is asked under the lock: the second would wait for the first); a second submission to
// a stream being joined waits for that join, so nothing is queued on it before its wait.
TEST_F(StreamActivity, StreamsStartingWorkAskTheLegacyStreamOutsideTheActivityLock) {
  const std::pair<CUstream, CUstream> streams = two_idle_streams();
  const CUstream a = streams.first, b = streams.second;
  launch_on(CU_STREAM_LEGACY);  // legacy work not known done: both joins ask
  fake_cuda_pause_legacy_queries(1);
  std::atomic<int> launched{0};
  std::thread first([&] { launch_on(a); launched.fetch_add(1); });
  ASSERT_TRUE(until([] { return fake_cuda_paused_legacy_queries() == 1; })) << "the first join asked nothing";
  std::thread second([&] { launch_on(b); launched.fetch_add(1); });
  std::thread same_stream([&] { launch_on(a); launched.fetch_add(1); });
  const bool both_asked = until([] { return fake_cuda_paused_legacy_queries() == 2; });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int launched_while_asking = launched.load();
  fake_cuda_pause_legacy_queries(0);  // before any ASSERT: the threads must end
  first.join();
  second.join();
  same_stream.join();
  EXPECT_TRUE(both_asked) << "the second stream's join waited for the first one's question (under the lock)";
  EXPECT_EQ(launched_while_asking, 0) << "work was queued on a stream before its join";
  EXPECT_EQ(launched.load(), 3);
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "the streams never went idle again";
  EXPECT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

// The launch that activates a stream queues its probe word's write without the activity lock (a write
// costs the launch 2.9 us on the H200, an event 0.8): two streams activated at once both reach their
// write (fails while it is queued under the lock: the second activation waits for the first). The
// probes still work: both streams go idle once their work is done.
TEST_F(StreamActivity, ActivatingStreamsQueueTheirProbeWritesOutsideTheActivityLock) {
  if (!word_probes()) GTEST_SKIP() << "stream writes refused: the probes are events";
  const std::pair<CUstream, CUstream> streams = two_idle_streams();
  const CUstream a = streams.first, b = streams.second;
  fake_cuda_pause_stream_writes(1);
  std::thread first([&] { launch_on(a); });
  const bool first_wrote = until([] { return fake_cuda_paused_stream_writes() == 1; });
  std::thread second([&] { launch_on(b); });
  const bool both_wrote = until([] { return fake_cuda_paused_stream_writes() == 2; });
  fake_cuda_pause_stream_writes(0);  // before any ASSERT: the threads must end
  first.join();
  second.join();
  EXPECT_TRUE(first_wrote) << "the activation queued no probe write";
  EXPECT_TRUE(both_wrote) << "the second activation waited for the first one's write (under the lock)";
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "the streams never went idle again";
  EXPECT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

// A probe word whose write can no longer land (the stream's context was destroyed without gpushim
// seeing its streams go) does not keep the stream counted for good: after enough polls find the word
// unwritten, the stream is asked, and its error means no more work runs there, as an event probe's
// error did. Fails if the word alone decides: frees would stay fenced for the rest of the process.
TEST_F(StreamActivity, AProbeWordThatCannotLandStillLetsTheStreamGoIdle) {
  if (!word_probes()) GTEST_SKIP() << "stream writes refused: the probes are events";
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 1);
  launch_on(s);  // its probe's write waits for the held work
  fake_cuda_kill_stream(s);
  fake_cuda_hold_stream(s, 0);
  EXPECT_FALSE(reused_at_once(fresh_block())) << "reused before anything said the stream was done";
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // 125 polls
  EXPECT_TRUE(reused_at_once(fresh_block())) << "a probe word that never lands kept the frees fenced";
}

// The launch that makes a stream active records its probe (after the join), so the polls in the frees
// that follow only read it: no cuStreamQuery, no cuEventRecord in a free.
TEST_F(StreamActivity, AStreamThatStartsWorkGetsItsProbeAtThatLaunch) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 1);
  const int records = probe_records();
  launch_on(s);
  EXPECT_EQ(probe_records(), records + 1) << "the probe only (the legacy stream had no work: no join)";
  const int stream_queries = fake_cuda_calls("cuStreamQuery");
  for (int i = 0; i < 8; ++i) EXPECT_EQ(cuMemFree(fresh_block()), CUDA_SUCCESS);  // fenced: one poll
  EXPECT_FALSE(reused_at_once(fresh_block())) << "reused while the stream's work was held";
  EXPECT_EQ(probe_records(), records + 1) << "a poll recorded a probe in a free";
  fake_cuda_hold_stream(s, 0);
  churn();
  EXPECT_TRUE(reused_at_once(fresh_block())) << "frees stayed fenced after the stream's work was done";
  EXPECT_EQ(fake_cuda_calls("cuStreamQuery"), stream_queries) << "a poll asked the stream, not its probe";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A large block freed right after a side stream's work is done comes back at once: the free asks
// whether the stream is idle before fencing the block (a fence would hold it until a later poll).
TEST_F(StreamActivity, ALargeFreeAfterTheSideStreamIsDoneIsReusedAtOnce) {
  constexpr std::size_t kBig = std::size_t{16} << 20;
  const CUstream s = active_side_stream();  // done at once: the fake GPU is not held
  CUdeviceptr big = 0;
  ASSERT_EQ(cuMemAlloc(&big, kBig), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFree(big), CUDA_SUCCESS);
  CUdeviceptr again = 0;
  ASSERT_EQ(cuMemAlloc(&again, kBig), CUDA_SUCCESS);
  EXPECT_EQ(again, big) << "the block waited for a fence though the side stream was idle";
  EXPECT_EQ(cuMemFree(again), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A large block freed while a held side stream may still use it, and an allocation of its size when the
// arena has no free memory left: the arena is at its peak. Returns the freed block; its batch is fenced
// (64 MiB closes a batch at once) on `s`, which is held.
constexpr std::size_t kLarge = std::size_t{64} << 20;

bool arena_backend() { return backend() == "vmm" || backend() == "tiered"; }

CUdeviceptr large_block_fenced_on(CUstream s) {
  fake_cuda_hold_stream(s, 1);
  CUdeviceptr used = 0;
  EXPECT_EQ(cuMemAlloc(&used, kLarge), CUDA_SUCCESS);
  EXPECT_EQ(cuMemsetD8Async(used, 3, kLarge, s), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(used), CUDA_SUCCESS);
  return used;
}

// Allocates `bytes` while the held stream `s` finishes its work 10 ms later (the allocation waits at the
// peak meanwhile); 0 when the allocation failed.
CUdeviceptr allocate_while_it_finishes(CUstream s, std::size_t bytes) {
  std::thread gpu([s] {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    fake_cuda_hold_stream(s, 0);
  });
  CUdeviceptr p = 0;
  EXPECT_EQ(cuMemAlloc(&p, bytes), CUDA_SUCCESS);
  gpu.join();
  return p;
}

// At the peak, an allocation that only growth would serve waits for the fenced block instead: the
// process's peak does not rise by memory the GPU is about to give back (allocators/growth_policy.h).
TEST_F(StreamActivity, AtThePeakAnAllocationWaitsForFencedBlocksRatherThanGrow) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  const CUstream s = active_side_stream();
  const CUdeviceptr used = large_block_fenced_on(s);
  const std::size_t physical = fake_cuda_physical_bytes(0);
  const CUdeviceptr again = allocate_while_it_finishes(s, kLarge);
  EXPECT_EQ(again, used) << "the allocation grew the arena instead of waiting for the fenced block";
  EXPECT_EQ(fake_cuda_physical_bytes(0), physical) << "the peak rose by a block the GPU was about to give back";
  EXPECT_EQ(cuMemFree(again), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// ... but not when the fenced blocks could not serve it: a few small blocks wait for a fence, and the
// allocation grows at once rather than wait for bytes that would not be enough. The statistics count it
// apart from growth by the rule's turn and after a wait in vain (router/memory_report.h; the run
// router_stream_activity_peak_statistics.unwaited checks its line).
TEST_F(StreamActivity, AtThePeakAnAllocationTheFencedBlocksCannotServeGrowsAtOnce) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  const CUstream s = active_side_stream();
  fake_cuda_hold_stream(s, 1);
  CUdeviceptr kept = 0;
  ASSERT_EQ(cuMemAlloc(&kept, kLarge), CUDA_SUCCESS);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 3, kBlock, s), CUDA_SUCCESS);
  free_and_close_batch(used);  // ~1 MiB of small blocks waits for the held stream
  const std::size_t physical = fake_cuda_physical_bytes(0);
  const auto start = std::chrono::steady_clock::now();
  CUdeviceptr other = 0;
  ASSERT_EQ(cuMemAlloc(&other, kLarge), CUDA_SUCCESS);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(25))
      << "the allocation waited for fenced blocks that could not serve it";
  EXPECT_GT(fake_cuda_physical_bytes(0), physical) << "the allocation did not meet the peak";
  for (CUdeviceptr p : {kept, other}) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// The wait is bounded: a fence that does not complete (here a stream held for good; in a program, work
// waiting for something the program does later) costs a short wait, then the arena grows, and the
// fenced block is still not handed out.
TEST_F(StreamActivity, TheWaitForFencedBlocksIsBounded) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  const CUstream s = active_side_stream();
  const CUdeviceptr used = large_block_fenced_on(s);
  const std::size_t physical = fake_cuda_physical_bytes(0);
  const auto start = std::chrono::steady_clock::now();
  CUdeviceptr other = 0;
  ASSERT_EQ(cuMemAlloc(&other, kLarge), CUDA_SUCCESS);
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_NE(other, used) << "a block the held stream's work may touch was handed out";
  EXPECT_GT(fake_cuda_physical_bytes(0), physical);
  EXPECT_LT(waited, std::chrono::seconds(1));
  EXPECT_EQ(cuMemFree(other), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// At the peak, this thread's own frees waiting in its open batch (a 32 MiB block: a batch closes at
// 64 MiB) are fenced there and waited for like the fenced blocks: the fenced bytes alone (one small
// batch) were too few to wait for, and the arena grew by a block this thread had just freed.
TEST_F(StreamActivity, AtThePeakAnAllocationFencesItsOwnOpenBatchAndWaitsForIt) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  constexpr std::size_t kHalf = kLarge / 2;
  const CUstream s = active_side_stream();
  fake_cuda_hold_stream(s, 1);
  CUdeviceptr used = 0;
  ASSERT_EQ(cuMemAlloc(&used, kHalf), CUDA_SUCCESS);
  ASSERT_EQ(cuMemsetD8Async(used, 3, kHalf, s), CUDA_SUCCESS);
  free_and_close_batch(fresh_block());       // a closed batch of small blocks waits for its fence
  ASSERT_EQ(cuMemFree(used), CUDA_SUCCESS);  // into the open batch after it
  const std::size_t physical = fake_cuda_physical_bytes(0);
  const CUdeviceptr again = allocate_while_it_finishes(s, kHalf);
  EXPECT_EQ(fake_cuda_physical_bytes(0), physical) << "the arena grew by a block this thread's open batch held";
  EXPECT_EQ(cuMemFree(again), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// At the peak, a block of the size that another thread got back (its returned list) serves the
// allocation: it is free memory the backend does not see, and the arena does not grow past it.
TEST_F(StreamActivity, AtThePeakAnAllocationTakesABlockOfItsSizeAnotherThreadGotBack) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  // Allocated before any block is fenced, so that none of these allocations is at the peak.
  std::vector<CUdeviceptr> small(300);  // a batch closes at 256
  for (CUdeviceptr& p : small) p = fresh_block();
  const CUstream s = active_side_stream();
  CUdeviceptr theirs = 0;
  std::atomic<int> step{0};
  std::thread other([&] {
    theirs = large_block_fenced_on(s);  // its batch closes at once: fenced on the held stream
    step = 1;
    while (step != 2) std::this_thread::yield();  // alive: its returned list stays its own
  });
  while (step != 1) std::this_thread::yield();
  // A second stream, held for good from here: the work stays unordered and the next fence waits.
  const CUstream held = active_side_stream();
  fake_cuda_hold_stream(held, 1);
  ASSERT_EQ(cuMemsetD8Async(small[0], 1, kBlock, held), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 0);
  // The close of this batch polls: the other thread's fence is complete, and its block goes back to
  // that thread's list; this batch waits for the held stream.
  for (CUdeviceptr p : small) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  const std::size_t physical = fake_cuda_physical_bytes(0);
  CUdeviceptr mine = 0;
  ASSERT_EQ(cuMemAlloc(&mine, kLarge), CUDA_SUCCESS);
  EXPECT_EQ(mine, theirs) << "the allocation did not take the block another thread got back";
  EXPECT_EQ(fake_cuda_physical_bytes(0), physical) << "the arena grew past a free block of the size";
  step = 2;
  other.join();
  EXPECT_EQ(cuMemFree(mine), CUDA_SUCCESS);
  fake_cuda_hold_stream(held, 0);
  for (CUstream each : {s, held}) EXPECT_EQ(cuStreamDestroy(each), CUDA_SUCCESS);
}

// 20 allocations of `bytes` with a side stream held for good, every other one kept live and the others
// used by the stream and freed, fenced for good: each allocation but the first finds the peak, and
// every wait runs its full 50 ms. Counts those that waited and those that grew at once.
struct PeakWaits {
  int waited = 0;
  int without_wait = 0;
};
PeakWaits allocate_at_a_held_peak(std::size_t bytes) {
  PeakWaits counts;
  const CUstream s = active_side_stream();
  fake_cuda_hold_stream(s, 1);
  std::vector<CUdeviceptr> kept;
  std::set<CUdeviceptr> fenced;
  for (int i = 0; i < 20; ++i) {
    const auto start = std::chrono::steady_clock::now();
    CUdeviceptr p = 0;
    EXPECT_EQ(cuMemAlloc(&p, bytes), CUDA_SUCCESS);
    if (p == 0) break;
    const bool fast = std::chrono::steady_clock::now() - start < std::chrono::milliseconds(25);
    if (i > 0) ++(fast ? counts.without_wait : counts.waited);
    EXPECT_EQ(fenced.count(p), 0u) << "a block the held stream's work may touch was handed out";
    if (i % 2 == 0) {
      kept.push_back(p);
      continue;
    }
    EXPECT_EQ(cuMemsetD8Async(p, 3, 4096, s), CUDA_SUCCESS);  // the held stream uses it
    EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);                     // fenced for good
    fenced.insert(p);
  }
  for (CUdeviceptr p : kept) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
  return counts;
}

// Waiting at the peak is paid a bounded number of times: when allocations keep finding the peak while
// fenced blocks wait, and the waits take the time (here every one runs its full 50 ms), every 8th of
// them grows at once instead (router/peak_growth.h). The run router_stream_activity_peak_statistics.rule
// checks that the statistics tell those from the growth after each wait in vain.
TEST_F(StreamActivity, AllocationsThatKeepFindingThePeakGrowItWithoutWaiting) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  const PeakWaits counts = allocate_at_a_held_peak(kLarge);
  EXPECT_GE(counts.without_wait, 2) << "every allocation at the peak waited for a fence that never completes";
  EXPECT_GE(counts.waited, 10) << "allocations at the peak grew without waiting first";
}

// ... but a growth costs memory in proportion to the block: above 64 MiB a miss grows at once only once
// per block / 8 MiB misses (router/peak_growth.h, peak_misses_per_growth), so at 256 MiB once per 32.
// 19 allocations at the peak may meet at most one such turn of the shared count; every 8th, as for
// 64 MiB, would be two or three.
TEST_F(StreamActivity, LargerBlocksGrowAtThePeakWithoutWaitingMoreRarely) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  const PeakWaits counts = allocate_at_a_held_peak(std::size_t{256} << 20);
  EXPECT_LE(counts.without_wait, 1) << "256 MiB blocks grew the arena at once as often as 64 MiB blocks";
  EXPECT_GE(counts.waited, 18);
}

// ... but only while the waits take the time: where each wait is short and the program mostly does
// other work, growing would buy nothing, and no turn of the count grows (router/peak_growth.h). One
// thread at 1 GiB with a stream on the H200 held 5 GiB for one live block when every 128th miss grew.
TEST_F(StreamActivity, AllocationsWhoseWaitsAreShortNeverGrowThePeak) {
  if (!arena_backend()) GTEST_SKIP() << backend() << " has no arena that grows in steps";
  const CUstream s = active_side_stream();
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, kLarge), CUDA_SUCCESS);
  const std::size_t physical = fake_cuda_physical_bytes(0);
  int slow = 0;
  for (int i = 0; i < 24; ++i) {  // three turns of the count at 64 MiB
    fake_cuda_hold_stream(s, 1);
    ASSERT_EQ(cuMemsetD8Async(p, 1, 4096, s), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);  // its batch closes at once: fenced behind the held work
    std::thread gpu([s] {                   // the work ends 1 ms later
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      fake_cuda_hold_stream(s, 0);
    });
    const auto start = std::chrono::steady_clock::now();
    ASSERT_EQ(cuMemAlloc(&p, kLarge), CUDA_SUCCESS);  // at the peak: waits for that fence
    slow += std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(1);
    gpu.join();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the program's own work
  }
  EXPECT_EQ(fake_cuda_physical_bytes(0), physical) << "an allocation grew where a short wait served it";
  EXPECT_GE(slow, 20) << "the allocations did not wait for the fence: the test no longer meets the peak";
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// The hazard of sharing a stream's fence event: that event has completed, then the stream queues more
// work on a block, and the block is freed. Its fence must be a new event after that work; the completed
// one would hand the block out while the work is queued. (Large blocks: each free closes its batch.)
TEST_F(StreamActivity, WorkQueuedAfterAStreamsFenceEventGetsANewOne) {
  const CUstream s = active_side_stream();
  fake_cuda_hold_stream(s, 1);
  launch_on(s);
  CUdeviceptr first = 0;
  ASSERT_EQ(cuMemAlloc(&first, kLarge), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFree(first), CUDA_SUCCESS);  // fenced by an event on `s`, behind the held launch
  fake_cuda_hold_stream(s, 0);                // that event completes
  const CUdeviceptr used = large_block_fenced_on(s);  // held again: a set on `used`, then its free
  std::vector<CUdeviceptr> blocks(3);
  for (CUdeviceptr& p : blocks) {
    ASSERT_EQ(cuMemAlloc(&p, kLarge), CUDA_SUCCESS);
    EXPECT_NE(p, used) << "a block fenced by an event older than its last user was handed out";
  }
  fake_cuda_hold_stream(s, 0);
  for (CUdeviceptr p : blocks) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Two threads' fenced batches complete in one round polled by this thread: its own blocks go to its
// own returned list as the other thread's go to that thread's (BlockOwners, router/free_fence_queue.h).
// Given to the backend through this thread's cache (2 MiB a class holds two 1 MiB blocks), they would
// be what the other thread's next allocations get, once its own returned blocks run out.
TEST_F(StreamActivity, APollersOwnBlocksStayWithItWhenAnotherThreadsShareTheRound) {
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  constexpr int kBatch = 64;  // 64 MiB: the batch closes at its last free
  const CUstream s = active_side_stream();
  fake_cuda_hold_stream(s, 1);
  auto free_a_batch = [s](std::set<CUdeviceptr>* freed) {
    std::vector<CUdeviceptr> blocks(kBatch);
    for (CUdeviceptr& p : blocks) {
      ASSERT_EQ(cuMemAlloc(&p, kMiB), CUDA_SUCCESS);
      ASSERT_EQ(cuMemsetD8Async(p, 1, kMiB, s), CUDA_SUCCESS);
    }
    for (CUdeviceptr p : blocks) {
      ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
      freed->insert(p);
    }
  };
  std::vector<CUdeviceptr> later(16);  // allocated now: their frees below take nothing from a list
  for (CUdeviceptr& p : later) p = fresh_block();
  std::set<CUdeviceptr> mine, theirs, got;
  std::atomic<int> step{0};
  std::thread other([&] {
    free_a_batch(&theirs);
    step = 1;
    while (step != 2) std::this_thread::yield();
    std::vector<CUdeviceptr> blocks(2 * kBatch);  // its own 64 back, then 64 more from the backend
    for (CUdeviceptr& p : blocks) {
      ASSERT_EQ(cuMemAlloc(&p, kMiB), CUDA_SUCCESS);
      got.insert(p);
    }
    for (CUdeviceptr p : blocks) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
    step = 3;
  });
  while (step != 1) std::this_thread::yield();
  free_a_batch(&mine);
  fake_cuda_hold_stream(s, 0);
  for (CUdeviceptr p : later) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);  // polls: the stream is idle
  step = 2;
  while (step != 3) std::this_thread::yield();
  other.join();
  int taken = 0;
  for (CUdeviceptr p : got) taken += static_cast<int>(mine.count(p));
  EXPECT_EQ(taken, 0) << "the other thread got blocks this thread polled back to the backend";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

}  // namespace
