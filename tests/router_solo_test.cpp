// Solo (router/stream_activity.h): while one non-blocking stream carries work alone, a freed block is
// handed out again at once, and whatever work touches it next is queued behind that stream's. End to
// end over the fake driver, each test in its own process (tests/router_e2e.cmake). The fake GPU holds a
// stream's work while fake_cuda_hold_stream(stream, 1) is on, and so holds the later work of every stream
// that waited for it: "cuStreamQuery says NOT_READY" is how a test sees that work was queued behind it.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "stream_activity_support.h"

namespace {

using namespace stream_activity_support;

class Solo : public FakeGpuStreams {
 protected:
  void SetUp() override {
    FakeGpuStreams::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_EQ(cuStreamCreate(&lone_, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  }
  void TearDown() override {
    FakeGpuStreams::TearDown();
    if (!lone_) return;  // skipped before it was made
    fake_cuda_hold_stream(lone_, 0);
    EXPECT_EQ(cuStreamDestroy(lone_), CUDA_SUCCESS);
  }

  // The lone stream starts work (solo begins) and is held there; a block used on it is freed and
  // handed straight out again. Returns that block, whose last user is the held work.
  CUdeviceptr block_reused_beside_the_held_lone_stream() {
    launch_on(lone_);
    fake_cuda_hold_stream(lone_, 1);
    const CUdeviceptr used = fresh_block();
    EXPECT_EQ(cuMemsetD8Async(used, 1, kBlock, lone_), CUDA_SUCCESS);
    EXPECT_EQ(cuMemFree(used), CUDA_SUCCESS);
    const CUdeviceptr again = fresh_block();
    EXPECT_EQ(again, used) << "a lone stream's freed block was not reused at once";
    return again;
  }

  // Lets the lone stream's work finish and frees until a poll has found it idle: the work is ordered
  // again, so its next launch starts a new solo.
  void let_the_lone_stream_finish() {
    fake_cuda_hold_stream(lone_, 0);
    churn();
    ASSERT_TRUE(reused_at_once(fresh_block()));
  }

  CUstream lone_ = nullptr;
};

TEST_F(Solo, ALoneStreamsFreedBlocksAreReusedAtOnce) {
  const CUdeviceptr block = block_reused_beside_the_held_lone_stream();
  // More work on the lone stream is queued behind its earlier work by stream order: solo goes on.
  ASSERT_EQ(cuMemsetD8Async(block, 2, kBlock, lone_), CUDA_SUCCESS);
  EXPECT_TRUE(reused_at_once(block));
  EXPECT_EQ(cuStreamQuery(CU_STREAM_LEGACY), CUDA_SUCCESS) << "the legacy stream was made to wait with no legacy work";
}

// Every kind of legacy submission that may touch such a block is queued behind the lone stream's work:
// a launch, an async set, a synchronous set and copy (which return before the device has finished).
TEST_F(Solo, LegacyWorkAfterALoneStreamsFreesWaitsForIt) {
  const std::vector<std::pair<const char*, std::function<CUresult(CUdeviceptr)>>> legacy_work = {
      {"a kernel launch", [](CUdeviceptr) { return cuLaunchKernel(nullptr, 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, nullptr); }},
      {"an async set", [](CUdeviceptr p) { return cuMemsetD8Async(p, 3, kBlock, CU_STREAM_LEGACY); }},
      {"a synchronous set", [](CUdeviceptr p) { return cuMemsetD8(p, 3, kBlock); }},
      {"a synchronous copy", [](CUdeviceptr p) {
         static unsigned char host[kBlock] = {};
         return cuMemcpyHtoD(p, host, kBlock);
       }},
  };
  for (const auto& [what, submit] : legacy_work) {
    SCOPED_TRACE(what);
    const CUdeviceptr block = block_reused_beside_the_held_lone_stream();
    const int waits = fake_cuda_calls("cuStreamWaitEvent");
    ASSERT_EQ(submit(block), CUDA_SUCCESS);
    EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits + 1) << "the legacy stream did not wait for the lone stream";
    EXPECT_EQ(cuStreamQuery(CU_STREAM_LEGACY), CUDA_ERROR_NOT_READY) << "legacy work not queued behind the lone stream";
    // Solo is over: a block the lone stream's held work uses is fenced now.
    const CUdeviceptr other = fresh_block();
    ASSERT_EQ(cuMemsetD8Async(other, 4, kBlock, lone_), CUDA_SUCCESS);
    EXPECT_FALSE(reused_at_once(other)) << "reused at once beside a stream after legacy work joined it";
    // One wait covers the legacy stream from then on.
    ASSERT_EQ(cuMemsetD8Async(block, 5, kBlock, CU_STREAM_LEGACY), CUDA_SUCCESS);
    EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits + 1) << "legacy work waited again";
    EXPECT_EQ(cuMemFree(block), CUDA_SUCCESS);
    let_the_lone_stream_finish();
    EXPECT_EQ(cuStreamQuery(CU_STREAM_LEGACY), CUDA_SUCCESS);
  }
}

// Another stream that starts work, non-blocking or blocking, is queued behind the lone stream's work, and
// so is every stream that starts work after it until the lone stream's end is known to be done.
TEST_F(Solo, OtherStreamsThatStartWorkWaitForTheLoneStream) {
  for (unsigned int flags : {static_cast<unsigned int>(CU_STREAM_NON_BLOCKING), 0u}) {
    SCOPED_TRACE(flags ? "non-blocking" : "blocking");
    CUstream next = nullptr, later = nullptr;
    ASSERT_EQ(cuStreamCreate(&next, flags), CUDA_SUCCESS);
    ASSERT_EQ(cuStreamCreate(&later, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    const CUdeviceptr block = block_reused_beside_the_held_lone_stream();
    ASSERT_EQ(cuMemsetD8Async(block, 6, kBlock, next), CUDA_SUCCESS);
    EXPECT_EQ(cuStreamQuery(next), CUDA_ERROR_NOT_READY) << "the next stream's work does not wait for the lone stream";
    launch_on(later);
    EXPECT_EQ(cuStreamQuery(later), CUDA_ERROR_NOT_READY) << "a later stream's work does not wait for the lone stream";
    const CUdeviceptr other = fresh_block();
    ASSERT_EQ(cuMemsetD8Async(other, 7, kBlock, lone_), CUDA_SUCCESS);
    EXPECT_FALSE(reused_at_once(other)) << "reused at once while several streams work";
    fake_cuda_hold_stream(lone_, 0);
    EXPECT_EQ(cuStreamQuery(next), CUDA_SUCCESS);
    EXPECT_EQ(cuMemFree(block), CUDA_SUCCESS);
    churn();
    for (CUstream s : {next, later}) EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
    churn();
  }
}

// What a runtime of CUDA 12.6-12.9 finds through cuGetProcAddress at its own version: the batch copy's
// 12.8 prototype and the decompression. Work they queue on another stream waits for the lone stream as
// a kernel's does (shim/work_submission_entries.inc).
TEST_F(Solo, OlderBatchCopiesAndDecompressionsWaitForTheLoneStream) {
  void* copy = nullptr;
  void* decompress = nullptr;
  CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  ASSERT_EQ(cuGetProcAddress("cuMemcpyBatchAsync", &copy, 12080, CU_GET_PROC_ADDRESS_DEFAULT, &status), CUDA_SUCCESS);
  ASSERT_EQ(cuGetProcAddress("cuMemBatchDecompressAsync", &decompress, 12060, CU_GET_PROC_ADDRESS_DEFAULT, &status),
            CUDA_SUCCESS);
  for (const bool copies : {true, false}) {
    SCOPED_TRACE(copies ? "cuMemcpyBatchAsync, CUDA 12.8" : "cuMemBatchDecompressAsync");
    CUstream next = nullptr;
    ASSERT_EQ(cuStreamCreate(&next, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    CUdeviceptr source = fresh_block();
    CUdeviceptr block = block_reused_beside_the_held_lone_stream();
    std::size_t bytes = kBlock, attributes_index = 0, failed_index = 0;
    if (copies) {
      CUmemcpyAttributes attributes{};
      attributes.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
      ASSERT_EQ(reinterpret_cast<PFN_cuMemcpyBatchAsync_v12080>(copy)(&block, &source, &bytes, 1, &attributes,
                                                                      &attributes_index, 1, &failed_index, next),
                CUDA_SUCCESS);
    } else {
      CUmemDecompressParams params{};
      params.src = reinterpret_cast<const void*>(source);
      params.srcNumBytes = kBlock;
      params.dst = reinterpret_cast<void*>(block);
      params.dstNumBytes = kBlock;
      ASSERT_EQ(reinterpret_cast<PFN_cuMemBatchDecompressAsync_v12060>(decompress)(&params, 1, 0, &failed_index, next),
                CUDA_SUCCESS);
    }
    EXPECT_EQ(cuStreamQuery(next), CUDA_ERROR_NOT_READY) << "its work does not wait for the lone stream";
    fake_cuda_hold_stream(lone_, 0);
    EXPECT_EQ(cuStreamQuery(next), CUDA_SUCCESS);
    EXPECT_EQ(cuMemFree(block), CUDA_SUCCESS);
    EXPECT_EQ(cuMemFree(source), CUDA_SUCCESS);
    churn();
    EXPECT_EQ(cuStreamDestroy(next), CUDA_SUCCESS);
    churn();
  }
}

// Legacy work submitted while the lone stream's join asks about the legacy stream (outside the activity
// lock) may be queued after that question: solo must not begin, and the stream's frees stay fenced.
// (The join asks only while legacy work is not known done: the first launch below.)
TEST_F(Solo, LegacyWorkDuringTheLoneStreamsJoinKeepsItsFreesFenced) {
  const CUdeviceptr legacy_block = fresh_block();
  launch_on(CU_STREAM_LEGACY);
  fake_cuda_pause_legacy_queries(1);
  std::thread joining([this] { launch_on(lone_); });
  ASSERT_TRUE(until([] { return fake_cuda_paused_legacy_queries() == 1; }));
  ASSERT_EQ(cuMemsetD8Async(legacy_block, 1, kBlock, CU_STREAM_LEGACY), CUDA_SUCCESS);
  fake_cuda_pause_legacy_queries(0);
  joining.join();
  fake_cuda_hold_stream(lone_, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, lone_), CUDA_SUCCESS);
  EXPECT_FALSE(reused_at_once(used)) << "solo began though legacy work came during its join";
  EXPECT_EQ(cuMemFree(legacy_block), CUDA_SUCCESS);
}

// Legacy work still being queued when the lone stream starts (its submission read "no solo" before)
// may land after the join looked at the legacy stream: solo must not begin.
TEST_F(Solo, NoSoloBeginsWhileALegacySubmissionIsInFlight) {
  if (!word_probes()) GTEST_SKIP() << "pauses a legacy stream write, which this run's driver refuses";
  const CUdeviceptr word = fresh_block();
  fake_cuda_pause_stream_writes(1);
  std::thread legacy([word] { cuStreamWriteValue32(CU_STREAM_LEGACY, word, 1, 0); });
  ASSERT_TRUE(until([] { return fake_cuda_paused_stream_writes() == 1; }));
  // The lone stream's launch queues its probe, a stream write too: from another thread, which it holds.
  std::thread starting([this] { launch_on(lone_); });
  ASSERT_TRUE(until([] { return fake_cuda_paused_stream_writes() == 2; }));
  fake_cuda_hold_stream(lone_, 1);
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 1, kBlock, lone_), CUDA_SUCCESS);
  EXPECT_FALSE(reused_at_once(used)) << "solo began while a legacy submission was in flight";
  fake_cuda_pause_stream_writes(0);
  legacy.join();
  starting.join();
  EXPECT_EQ(cuMemFree(word), CUDA_SUCCESS);
}

// The lone stream keeps working while another stream's work (cuDNN's at its handle's creation) ended
// solo: after kSoloQuietNs (10 ms) of that stream idle, a poll lets solo begin again, though the lone stream
// never went idle. Returns the other stream, active and idle; the lone stream is held busy.
CUstream other_stream_worked_once_beside(CUstream lone) {
  launch_on(lone);  // solo begins
  CUstream other = nullptr;
  EXPECT_EQ(cuStreamCreate(&other, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  launch_on(other);  // ends it; its work waits for the lone stream's so far, which then completes
  fake_cuda_hold_stream(lone, 1);
  launch_on(lone);   // busy from here on
  churn();           // polls find the other stream idle
  return other;
}

TEST_F(Solo, ALoneStreamBecomesSoloAgainOnceTheOtherStreamsAreQuiet) {
  const CUstream other = other_stream_worked_once_beside(lone_);
  const CUdeviceptr early = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(early, 1, kBlock, lone_), CUDA_SUCCESS);
  EXPECT_FALSE(reused_at_once(early)) << "solo began again before the other stream had been quiet for long";
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  churn();
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 2, kBlock, lone_), CUDA_SUCCESS);
  EXPECT_TRUE(reused_at_once(used)) << "solo did not begin again beside quiet streams";
  const CUdeviceptr block = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(block, 3, kBlock, other), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamQuery(other), CUDA_ERROR_NOT_READY) << "the other stream's new work does not wait for the lone stream";
  fake_cuda_hold_stream(lone_, 0);
  EXPECT_EQ(cuStreamQuery(other), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(block), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(other), CUDA_SUCCESS);
}

// Legacy work queued after the lone stream's join is not ordered with it: while the legacy stream has
// work, solo does not begin at a poll.
TEST_F(Solo, NoSoloBesideQuietStreamsWhileTheLegacyStreamHasWork) {
  const CUstream other = other_stream_worked_once_beside(lone_);
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 1);
  const CUdeviceptr legacy_block = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(legacy_block, 1, kBlock, CU_STREAM_LEGACY), CUDA_SUCCESS);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  churn();
  const CUdeviceptr used = fresh_block();
  ASSERT_EQ(cuMemsetD8Async(used, 2, kBlock, lone_), CUDA_SUCCESS);
  EXPECT_FALSE(reused_at_once(used)) << "solo began while the legacy stream still had work";
  fake_cuda_hold_stream(CU_STREAM_LEGACY, 0);
  fake_cuda_hold_stream(lone_, 0);
  EXPECT_EQ(cuMemFree(legacy_block), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(other), CUDA_SUCCESS);
}

// A capture begins: solo ends first (its end event is recorded on the lone stream before that stream
// could be capturing), and the lone stream's frees are fenced from then on.
TEST_F(Solo, ACaptureEndsSolo) {
  const CUdeviceptr block = block_reused_beside_the_held_lone_stream();
  CUstream capturing = nullptr;
  ASSERT_EQ(cuStreamCreate(&capturing, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  const int records = fake_cuda_calls("cuEventRecord");
  ASSERT_EQ(cuStreamBeginCapture(capturing, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_calls("cuEventRecord"), records + 1) << "solo's end event was not recorded before the capture";
  CUgraph graph = nullptr;
  ASSERT_EQ(cuStreamEndCapture(capturing, &graph), CUDA_SUCCESS);
  ASSERT_EQ(cuMemsetD8Async(block, 1, kBlock, CU_STREAM_LEGACY), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamQuery(CU_STREAM_LEGACY), CUDA_ERROR_NOT_READY) << "legacy work not queued behind the lone stream";
  EXPECT_EQ(cuMemFree(block), CUDA_SUCCESS);
  fake_cuda_hold_stream(lone_, 0);
  EXPECT_EQ(cuStreamDestroy(capturing), CUDA_SUCCESS);
}

}  // namespace
