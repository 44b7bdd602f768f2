// What the stream-activity tests share (router_stream_activity_test.cpp, router_solo_test.cpp): the fake
// driver's controls and the helpers that queue work and watch what the allocator hands out. Each test
// runs in its own process with libgpushim.so preloaded over the fake driver (tests/router_e2e.cmake).
#pragma once

#include <cuda.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern "C" {
int fake_cuda_calls(const char* symbol);
int fake_cuda_records_on_destroyed_streams();
std::size_t fake_cuda_physical_bytes(int device);
void fake_cuda_hold_gpu(int held);
void fake_cuda_hold_stream(CUstream stream, int held);
void fake_cuda_pause_legacy_queries(int paused);
void fake_cuda_kill_stream(CUstream stream);
void fake_cuda_pause_stream_writes(int paused);
int fake_cuda_paused_stream_writes();
int fake_cuda_paused_legacy_queries();
}

namespace stream_activity_support {

constexpr std::size_t kBlock = 4096;

inline std::string backend() {
  const char* name = std::getenv("GPUSHIM_BACKEND");
  return name && *name ? name : "tiered";
}

// The probes are words the fake GPU writes (router/probe_words.h) unless this run refuses stream writes,
// as a driver without stream memory operations would: then they are events.
inline bool word_probes() { return std::getenv("FAKE_CUDA_NO_STREAM_WRITES") == nullptr; }
// Whether gpushim counts legacy submissions, which it does for solo or for marked batches
// (router/stream_activity.h, legacy_counted): this suite runs without solo, and once without marked
// batches too (GPUSHIM_THREAD_FENCES=0, tests/router_e2e.cmake).
inline bool legacy_submissions_counted() {
  const char* thread_fences = std::getenv("GPUSHIM_THREAD_FENCES");
  return thread_fences == nullptr || std::string(thread_fences) != "0";
}
inline int probe_records() {
  return fake_cuda_calls("cuEventRecord") + (word_probes() ? fake_cuda_calls("cuStreamWriteValue32") : 0);
}

// Frees `p`, then allocates the same size: true when the allocator handed `p` straight back (reuse at
// once). Every backend that carves memory returns the block it just got back for an equal request.
inline bool reused_at_once(CUdeviceptr p) {
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  CUdeviceptr q = 0;
  EXPECT_EQ(cuMemAlloc(&q, kBlock), CUDA_SUCCESS);
  const bool same = q == p;
  EXPECT_EQ(cuMemFree(q), CUDA_SUCCESS);
  return same;
}

inline CUdeviceptr fresh_block() {
  CUdeviceptr p = 0;
  EXPECT_EQ(cuMemAlloc(&p, kBlock), CUDA_SUCCESS);
  return p;
}

// Enough fenced frees that the router polls stream activity (every 8th fenced free, router/router.cpp)
// more than once: one poll records the probe, a later one reads it.
inline void churn() {
  for (int i = 0; i < 200; ++i) {
    CUdeviceptr p = fresh_block();
    EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  }
}

// Waits up to 10 s for `done` (another thread reaching a paused driver call); its last answer.
inline bool until(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  return done();
}

// Two non-blocking streams that have not carried work yet.
inline std::pair<CUstream, CUstream> two_idle_streams() {
  CUstream a = nullptr, b = nullptr;
  EXPECT_EQ(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  return {a, b};
}

inline void launch_on(CUstream stream) {
  ASSERT_EQ(cuLaunchKernel(nullptr, 1, 1, 1, 1, 1, 1, 0, stream, nullptr, nullptr), CUDA_SUCCESS);
}

// `rounds` times, on each stream: a fresh block (never one of `busy`), a set queued on it, its free.
inline void use_and_free_in_rounds(const std::vector<CUstream>& streams, int rounds, std::set<CUdeviceptr>* busy) {
  for (int round = 0; round < rounds; ++round) {
    for (CUstream s : streams) {
      CUdeviceptr p = fresh_block();
      EXPECT_EQ(busy->count(p), 0u) << "a block still used by queued work was handed out";
      ASSERT_EQ(cuMemsetD8Async(p, 7, kBlock, s), CUDA_SUCCESS);
      busy->insert(p);
      EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
    }
  }
}

// A non-blocking stream that has carried work (active, joined while the legacy stream had caught up).
inline CUstream active_side_stream() {
  CUstream s = nullptr;
  EXPECT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  launch_on(s);
  return s;
}

// Frees `used` into this thread's batch, then enough other blocks that the batch closes (256 blocks):
// the batch's fence is recorded.
inline void free_and_close_batch(CUdeviceptr used) {
  std::vector<CUdeviceptr> others;
  for (int i = 0; i < 300; ++i) others.push_back(fresh_block());
  EXPECT_EQ(cuMemFree(used), CUDA_SUCCESS);
  for (CUdeviceptr p : others) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

// A block whose last user ran on `s` (held meanwhile) and whose batch was fenced; `s` is done now and
// frees have polled the fences since.
inline CUdeviceptr block_fenced_after_work_on(CUstream s) {
  fake_cuda_hold_stream(s, 1);
  const CUdeviceptr used = fresh_block();
  EXPECT_EQ(cuMemsetD8Async(used, 1, kBlock, s), CUDA_SUCCESS);
  free_and_close_batch(used);
  fake_cuda_hold_stream(s, 0);
  churn();
  return used;
}

// A block whose last user ran on the non-blocking stream `s` while it was held, freed into a closed (so
// fenced) batch; `s` is done now, but no poll has found that out yet, so the block is still held back.
inline CUdeviceptr block_freed_while_busy_on(CUstream s) {
  fake_cuda_hold_stream(s, 1);
  launch_on(s);
  const CUdeviceptr used = fresh_block();
  EXPECT_EQ(cuMemsetD8Async(used, 1, kBlock, s), CUDA_SUCCESS);
  free_and_close_batch(used);
  fake_cuda_hold_stream(s, 0);
  return used;
}

// Allocates up to `tries` blocks, all kept until the end: true when `p` was among them.
inline bool handed_out_again(CUdeviceptr p, int tries) {
  std::vector<CUdeviceptr> blocks;
  bool found = false;
  for (int i = 0; i < tries && !found; ++i) {
    blocks.push_back(fresh_block());
    found = blocks.back() == p;
  }
  for (CUdeviceptr q : blocks) EXPECT_EQ(cuMemFree(q), CUDA_SUCCESS);
  return found;
}

// Frees `used`, whose last user is queued on a held stream, and closes its batch: the fence queues no
// cuStreamWaitEvent (`why` says whose wait it would be), holds the block back, and gives it back once
// `finish` has let the stream's work complete.
inline void expect_fenced_without_a_wait(CUdeviceptr used, const std::function<void()>& finish, const char* why) {
  const int waits = fake_cuda_calls("cuStreamWaitEvent");
  free_and_close_batch(used);
  EXPECT_EQ(fake_cuda_calls("cuStreamWaitEvent"), waits) << why;
  EXPECT_FALSE(handed_out_again(used, 300)) << "a block a held stream's queued work may touch was handed out";
  finish();
  churn();
  EXPECT_TRUE(handed_out_again(used, 400));
}

// Both suites' fixture: libgpushim.so preloaded over the fake driver, the GPU not held. Backends that
// order their own frees skip: they never reuse a block at once.
class FakeGpuStreams : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("LD_PRELOAD"), nullptr) << "run through ctest: it preloads libgpushim.so";
    if (backend() == "passthrough" || backend() == "mempool")
      GTEST_SKIP() << backend() << " orders its own frees (cuMemFree syncs; the pool is stream-ordered)";
    ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
    fake_cuda_hold_gpu(0);
  }
  void TearDown() override { fake_cuda_hold_gpu(0); }
};

}  // namespace stream_activity_support
