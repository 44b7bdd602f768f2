// Marked batches (router/marked_batches.h), end to end: libgpushim.so over the fake driver, each test in
// its own process (tests/router_e2e.cmake). A cuMemFree batch closed while streams work stays with its
// thread, marked with how far each active stream had got, and comes back once polls have seen each get
// there; where the marks cannot vouch for all work issued before the close (legacy work not known done,
// a destroyed stream still counted), the batch goes to the fence queue as before.
#include <cuda.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "stream_activity_support.h"

namespace {

using namespace stream_activity_support;

using MarkedBatches = FakeGpuStreams;

// `s` gets work that it keeps until the test lets it go: it stays active, so frees stay fenced.
void keep_working(CUstream s) {
  fake_cuda_hold_stream(s, 1);
  launch_on(s);
}

// Two non-blocking streams that carry work, so that frees are fenced (two active streams are not solo).
std::pair<CUstream, CUstream> two_active_streams() {
  auto streams = two_idle_streams();
  launch_on(streams.first);
  launch_on(streams.second);
  return streams;
}

// A block used on a held stream, its batch closed while another stream works: no event, no wait and no
// question of the legacy stream for the batch (the marks are loads), the block held back while its
// user is queued, and back once that user is done, while the other stream is busy with later work, so
// that the work never turns ordered. (Through the fence queue it would be back too, by the events
// recorded on both streams at the close: what the marks save is those driver calls and the shared
// queue, docs/perf-notes.md, thirty-ninth session.)
TEST_F(MarkedBatches, ABatchClosedWhileStreamsWorkCallsNoDriverAndComesBackOnceTheirWorkIsDone) {
  auto [a, b] = two_active_streams();
  fake_cuda_hold_stream(a, 1);
  keep_working(b);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, a), CUDA_SUCCESS);
  const int records = fake_cuda_calls("cuEventRecord");
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  free_and_close_batch(used);
  if (word_probes()) {
    EXPECT_EQ(fake_cuda_calls("cuEventRecord"), records) << "an event recorded for a marked batch";
  }
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits) << "a wait queued for a marked batch";
  EXPECT_FALSE(handed_out_again(used, 300)) << "a block a held stream's queued work may touch was handed out";

  // b finishes what it had at the close and starts more, which it keeps: the work stays unordered.
  fake_cuda_hold_stream(b, 0);
  churn();
  keep_working(b);
  EXPECT_FALSE(handed_out_again(used, 300)) << "handed out while its own user on `a` was still queued";
  fake_cuda_hold_stream(a, 0);
  churn();  // polls see `a` done
  EXPECT_TRUE(handed_out_again(used, 400)) << "a marked batch waited for work queued after its close";
  fake_cuda_hold_stream(b, 0);
  EXPECT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

// A stream's submissions still queued at the close are what its mark waits for, not the stream going
// idle: many rounds of blocks used on held streams, none handed out while its user is queued. It fails
// when a mark passes before its stream's work is done.
TEST_F(MarkedBatches, NoBlockOfAMarkedBatchIsHandedOutWhileItsUserIsQueued) {
  auto [a, b] = two_active_streams();
  fake_cuda_hold_stream(a, 1);
  fake_cuda_hold_stream(b, 1);
  std::set<CUdeviceptr> busy;
  use_and_free_in_rounds({a, b}, 300, &busy);  // 600 frees: two batches close with users queued
  churn();
  for (int i = 0; i < 600; ++i) {
    const CUdeviceptr p = fresh_block();
    EXPECT_EQ(busy.count(p), 0u) << "a block still used by queued work was handed out";
    busy.insert(p);  // kept: each allocation gets a block not seen before
  }
  fake_cuda_hold_stream(a, 0);
  fake_cuda_hold_stream(b, 0);
  EXPECT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

// Legacy work not known done: the marks cannot vouch for it (a next user on a side stream would not
// wait for it), so the batch goes to the fence queue, whose fence makes the active side streams wait for
// the legacy work issued before it. It fails when a batch is marked beside unfinished legacy work.
TEST_F(MarkedBatches, LegacyWorkNotKnownDoneSendsTheBatchToTheFenceQueue) {
  auto [a, b] = two_idle_streams();
  keep_working(a);
  keep_working(b);
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, CU_STREAM_LEGACY), CUDA_SUCCESS);  // its last user
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  free_and_close_batch(used);
  EXPECT_GT(fake_cuda_calls("cuStreamWaitEvent"), waits)
      << "the side streams' later work must wait for the legacy work issued before the batch closed";
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  // (Under solo's rule the legacy stream was made to wait for `a`, solo's stream until `b` started:
  // all of it done now.)
  fake_cuda_hold_stream(a, 0);
  fake_cuda_hold_stream(b, 0);
  churn();
  // The legacy stream is done: batches are marked again (a join or the close asks it), with no event.
  keep_working(a);
  keep_working(b);
  const CUdeviceptr next = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(next, 1, kBlock, a), CUDA_SUCCESS);
  const int records = fake_cuda_calls("cuEventRecord");
  free_and_close_batch(next);
  if (word_probes()) {
    EXPECT_EQ(fake_cuda_calls("cuEventRecord"), records) << "legacy work known done: a marked batch";
  }
  EXPECT_FALSE(handed_out_again(next, 300)) << "handed out while its user on `a` was queued";
  fake_cuda_hold_stream(a, 0);
  fake_cuda_hold_stream(b, 0);
  churn();
  EXPECT_TRUE(handed_out_again(next, 400));
  for (CUstream s : {a, b}) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A destroyed stream still counted has work no poll will mark done: its batch goes to the fence queue
// (a device-wide fence, the legacy stream made to wait for the stream's last work), not to the marks.
TEST_F(MarkedBatches, ADestroyedStreamStillCountedSendsTheBatchToTheFenceQueue) {
  auto [a, b] = two_active_streams();
  fake_cuda_hold_stream(a, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, a), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);  // its work still runs
  const int records = fake_cuda_calls("cuEventRecord");
  free_and_close_batch(used);
  EXPECT_GT(fake_cuda_calls("cuEventRecord"), records) << "no fence while a destroyed stream's work runs";
  EXPECT_FALSE(handed_out_again(used, 300)) << "handed out while the destroyed stream's work was queued";
  fake_cuda_hold_stream(a, 0);
  churn();
  EXPECT_TRUE(handed_out_again(used, 400));
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

// A thread that exits with marked batches hands them to the fence queue as orphans (no driver call in a
// thread's exit): fenced again, they come back once the work is done, and never before.
TEST_F(MarkedBatches, AMarkedBatchOfAThreadThatExitsComesBackThroughTheQueue) {
  auto [a, b] = two_active_streams();
  fake_cuda_hold_stream(a, 1);
  CUdeviceptr used = 0;
  std::thread([&] {
    used = fresh_block();
    ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, a), CUDA_SUCCESS);
    free_and_close_batch(used);
  }).join();
  EXPECT_FALSE(handed_out_again(used, 300)) << "an exited thread's marked block was handed out while in use";
  fake_cuda_hold_stream(a, 0);
  churn();
  EXPECT_TRUE(handed_out_again(used, 1000)) << "an exited thread's marked batch never came back";
  EXPECT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

// Another thread's marked batch whose marks have passed, while that thread, idle, has not looked since:
// cuMemGetInfo counts its blocks as free, and under GPUSHIM_LIMIT (router_marked_batches_limit.*,
// tests/router_e2e.cmake) an allocation that finds no memory takes them before any wait for the GPU.
// The pressure path's first step lets fenced blocks come back, the marked batches' with the fence
// queue's (router/out_of_memory.cpp, return_unfenced_blocks). It fails where that step looks at the
// queue alone: the batch is then fenced through the queue in the next step, and comes back only after
// a synchronization.
TEST_F(MarkedBatches, AnotherThreadsPassedBatchIsCountedAndTakenUnderPressureWithoutAWait) {
  auto [a, b] = two_active_streams();
  fake_cuda_hold_stream(a, 1);
  keep_working(b);
  constexpr int kFrees = 300;  // the first 256 close the batch, which is marked; the rest stay open
  std::vector<CUdeviceptr> worker_blocks;
  std::atomic<int> stage{0};   // 1: the worker's blocks are live; 2: it may free; 3: freed; 4: it may exit
  const auto wait_for = [&stage](int value) {
    EXPECT_TRUE(until([&] { return stage.load() >= value; })) << "the worker never reached stage " << value;
  };
  std::thread worker([&] {
    for (int i = 0; i < kFrees; ++i) worker_blocks.push_back(fresh_block());
    ASSERT_EQ(cuMemsetD8Async(worker_blocks[0], 1, kBlock, a), CUDA_SUCCESS);  // its user, queued on `a`
    stage = 1;
    wait_for(2);
    for (CUdeviceptr p : worker_blocks) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
    stage = 3;
    wait_for(4);  // alive and idle: it makes no call that would look at its marked batch
  });
  wait_for(1);
  std::size_t free_while_live = 0, total = 0;
  ASSERT_EQ(cuMemGetInfo(&free_while_live, &total), CUDA_SUCCESS);
  stage = 2;
  wait_for(3);
  // `b` does what it had at the close and works on; `a` does what it had. Polls see `b` get there (this
  // thread's churn); nothing has seen `a` yet. The work never turns ordered: `b` stays busy.
  fake_cuda_hold_stream(b, 0);
  churn();
  keep_working(b);
  fake_cuda_hold_stream(a, 0);
  std::size_t free_after = 0;
  ASSERT_EQ(cuMemGetInfo(&free_after, &total), CUDA_SUCCESS);
  EXPECT_GE(free_after, free_while_live + kFrees * kBlock) << "the worker's marked and open batches not counted free";

  if (const char* limit = std::getenv("E2E_LIMIT_BYTES")) {
    const auto waits_for_gpu = [] {
      return fake_cuda_calls("cuEventSynchronize") + fake_cuda_calls("cuStreamSynchronize") +
             fake_cuda_calls("cuCtxSynchronize");
    };
    const std::set<CUdeviceptr> marked(worker_blocks.begin(), worker_blocks.begin() + 256);
    const int waits_before = waits_for_gpu();
    int waits_at_first_taken = -1;
    std::vector<CUdeviceptr> filler;
    testing::internal::CaptureStderr();  // the out-of-memory report, at the end
    const std::size_t most = std::strtoull(limit, nullptr, 10) / kBlock + kFrees;
    for (std::size_t i = 0; i < most; ++i) {
      CUdeviceptr p = 0;
      if (cuMemAlloc(&p, kBlock) != CUDA_SUCCESS) break;
      filler.push_back(p);
      if (waits_at_first_taken < 0 && marked.count(p)) waits_at_first_taken = waits_for_gpu();
    }
    testing::internal::GetCapturedStderr();
    EXPECT_GE(waits_at_first_taken, 0) << "no block of the worker's passed batch served an allocation at the limit";
    EXPECT_EQ(waits_at_first_taken, waits_before)
        << "the worker's passed batch served an allocation only after a wait for the GPU";
    for (CUdeviceptr p : filler) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  }
  stage = 4;
  worker.join();
  fake_cuda_hold_stream(b, 0);
  EXPECT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

// A thread whose blocks came back by their marks to its returned list, and whose work then stays
// ordered: its frees join the list only for a while (kAtOnceRunThatEndsKeeping, router/thread_state.h:
// 4,096 in a row), then go to the backend, and its allocations drain the list, so its pairs walk through
// the list's blocks once and settle on one block in its cache. It fails where a thread keeps every such
// free on its list for good: each pair then takes back the block it just freed through the list's spin
// lock, two locked instructions a pair that one thread with a launching stream paid for good (H200,
// docs/perf-notes.md, "Fiftieth session").
TEST_F(MarkedBatches, AThreadWhoseWorkStaysOrderedStopsKeepingItsFreesOnItsList) {
  constexpr std::size_t kSize = std::size_t{1} << 20;  // a class of the thread caches; 64 close a batch
  const auto pair = [] {
    CUdeviceptr p = 0;
    EXPECT_EQ(cuMemAlloc(&p, kSize), CUDA_SUCCESS);
    EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
    return p;
  };
  auto [a, b] = two_active_streams();
  fake_cuda_hold_stream(a, 1);
  fake_cuda_hold_stream(b, 1);
  for (int i = 0; i < 70; ++i) pair();  // all fenced: the first 64 close a marked batch
  fake_cuda_hold_stream(a, 0);
  fake_cuda_hold_stream(b, 0);
  for (int i = 0; i < 200; ++i) pair();  // polls pass the marks and see the work turn ordered
  std::set<CUdeviceptr> kept;
  for (int i = 0; i < 1000; ++i) kept.insert(pair());
  EXPECT_EQ(kept.size(), 1u) << "while the run is short, a pair takes back the block it freed";
  std::set<CUdeviceptr> walked;
  for (int i = 0; i < 2 * 4096; ++i) walked.insert(pair());
  // The list holds a part of the batch (its surplus rule and the cache take the rest): 8 blocks here.
  EXPECT_GE(walked.size(), 4u) << "the list never drained: every free was kept on it";
  std::set<CUdeviceptr> settled;
  for (int i = 0; i < 1000; ++i) settled.insert(pair());
  EXPECT_EQ(settled.size(), 1u) << "the pairs did not settle on one block once the list drained";
  EXPECT_EQ(cuStreamDestroy(a), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(b), CUDA_SUCCESS);
}

}  // namespace
