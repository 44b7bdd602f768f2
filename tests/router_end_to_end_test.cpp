// The whole of libgpushim.so — interposer, router, free fences, a real backend — in a real process, over
// the fake driver (tests/fake_driver/fake_libcuda.cpp: contexts, VMM over host memory, events, streams,
// pools). tests/router_e2e.cmake runs this program once per backend (GPUSHIM_BACKEND) with
// LD_PRELOAD=libgpushim.so, and once more per backend under GPUSHIM_LIMIT.
//
// Besides results, the tests read the fake's call counters: that is how "a pair in steady state makes no
// driver call but cuCtxGetCurrent" and "at most one fence per batch of frees" are checked without a GPU.
#include <cuda.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "router/free_fence_queue.h"
#include "tracing/backend_id.h"
#include "tracing/trace_format.h"
#include "tracing/trace_recorder.h"

extern "C" {
int fake_cuda_calls(const char* symbol);
long fake_cuda_total_calls();
void fake_cuda_hold_gpu(int held);
void fake_cuda_hold_stream(CUstream stream, int held);
std::size_t fake_cuda_physical_bytes(int device);
int fake_cuda_device_of(CUdeviceptr p);
int fake_cuda_records_on_destroyed_streams();
}

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;
constexpr std::size_t kFenceBatch = gpushim::kBatchMaxBlocks;  // a fence per at most this many cuMemFree

std::string backend() {
  const char* name = std::getenv("GPUSHIM_BACKEND");
  return name && *name ? name : "tiered";
}
// Backends whose memory gpushim carves itself (VMM over the fake).
bool carves_memory() { return backend() != "passthrough" && backend() != "mempool"; }

// Counts of the driver calls a pair may make, and of everything.
struct CallSnapshot {
  long total = fake_cuda_total_calls();
  std::map<std::string, int> calls;
  static const std::vector<std::string>& symbols() {
    static const std::vector<std::string> names = {
        "cuEventCreate", "cuEventRecord", "cuEventQuery", "cuEventSynchronize", "cuMemAlloc_v2", "cuMemFree_v2",
        "cuMemAllocFromPoolAsync", "cuMemFreeAsync", "cuMemCreate", "cuMemMap", "cuMemUnmap", "cuCtxGetDevice"};
    return names;
  }
  CallSnapshot() {
    for (const std::string& s : symbols()) calls[s] = fake_cuda_calls(s.c_str());
  }
  int since(const CallSnapshot& before, const char* symbol) const { return calls.at(symbol) - before.calls.at(symbol); }
};

// While the program's work is totally ordered (only the legacy stream, plus at most one blocking stream,
// carries work), cuMemFree'd blocks are reused at once (router/stream_activity.h). Work on a per-thread
// default stream ends that for the rest of the process (gpushim cannot probe another thread's per-thread
// stream to find it idle again). Tests of the fences call this first; the idle/active transitions have
// their own program (tests/router_stream_activity_test.cpp).
void leave_legacy_order() {
  ASSERT_EQ(cuLaunchKernel(nullptr, 1, 1, 1, 1, 1, 1, 0, CU_STREAM_PER_THREAD, nullptr, nullptr), CUDA_SUCCESS);
}

// cudaMalloc's blocks meet the texture alignment (512 B on the H100 and H200): so must gpushim's.
bool aligned(CUdeviceptr p) { return p % 512 == 0; }

// `pairs` cuMemAlloc+cuMemFree pairs of `bytes`: frees that reach no arena, as a program's small blocks
// do; the router's idle checks and fence polls run in them.
void small_pairs(int pairs, std::size_t bytes = 256) {
  for (int i = 0; i < pairs; ++i) {
    CUdeviceptr p = 0;
    ASSERT_EQ(cuMemAlloc(&p, bytes), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  }
}

void fill(CUdeviceptr p, std::size_t bytes, unsigned char value) { std::memset(reinterpret_cast<void*>(p), value, bytes); }
bool holds(CUdeviceptr p, std::size_t bytes, unsigned char value) {
  const auto* bytes_of = reinterpret_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < bytes; i += 97)
    if (bytes_of[i] != value) return false;
  return bytes_of[bytes - 1] == value;
}

class RouterEndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(std::getenv("LD_PRELOAD"), nullptr) << "run through ctest: it preloads libgpushim.so";
    ASSERT_EQ(cuInit(0), CUDA_SUCCESS);
    fake_cuda_hold_gpu(0);
  }
  void TearDown() override { fake_cuda_hold_gpu(0); }
};

TEST_F(RouterEndToEnd, BlocksAreAlignedDisjointAndWritable) {
  const std::size_t sizes[] = {1, 255, 256, 257, 4 * KiB + 1, 64 * KiB, MiB - 1, MiB, MiB + 1, 3 * MiB, 64 * MiB};
  std::vector<std::pair<CUdeviceptr, std::size_t>> blocks;
  for (int round = 0; round < 3; ++round) {
    for (std::size_t bytes : sizes) {
      CUdeviceptr p = 0;
      ASSERT_EQ(cuMemAlloc(&p, bytes), CUDA_SUCCESS) << bytes;
      ASSERT_TRUE(aligned(p)) << bytes;
      fill(p, bytes, static_cast<unsigned char>(blocks.size()));
      blocks.push_back({p, bytes});
    }
  }
  for (std::size_t i = 0; i < blocks.size(); ++i)
    EXPECT_TRUE(holds(blocks[i].first, blocks[i].second, static_cast<unsigned char>(i))) << blocks[i].second;
  std::vector<std::pair<CUdeviceptr, std::size_t>> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 1; i < sorted.size(); ++i)
    EXPECT_GE(sorted[i].first, sorted[i - 1].first + sorted[i - 1].second) << "overlap";
  for (const auto& [p, bytes] : blocks) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS) << bytes;
}

TEST_F(RouterEndToEnd, ZeroBytesAndNullOutAreInvalid) {
  CUdeviceptr p = 0;
  EXPECT_EQ(cuMemAlloc(&p, 0), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuMemAlloc(nullptr, 256), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuMemFree(0), CUDA_SUCCESS);  // cudaFree(0): the driver's answer
}

// Runs first (declaration order): before any stream exists, a pair makes no driver call at all.
TEST_F(RouterEndToEnd, BeforeAnyStreamPairsMakeNoDriverCall) {
  if (!carves_memory()) GTEST_SKIP() << backend() << " allocates with the driver";
  ASSERT_NO_FATAL_FAILURE(small_pairs(1000, 4 * KiB));
  const long before = fake_cuda_total_calls();
  for (int i = 0; i < 10000; ++i) {
    CUdeviceptr p = 0;
    ASSERT_EQ(cuMemAlloc(&p, 4 * KiB), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  }
  EXPECT_EQ(fake_cuda_total_calls(), before);
}

// The hot path: after warm-up, alloc+free pairs cost no driver call but the fences' events.
TEST_F(RouterEndToEnd, SteadyStatePairsMakeNoDriverCallButFences) {
  constexpr int kPairs = 64 * 100;
  leave_legacy_order();
  for (std::size_t bytes : {std::size_t{256}, 64 * KiB, MiB}) {
    for (int i = 0; i < 2000; ++i) {
      CUdeviceptr p = 0;
      ASSERT_EQ(cuMemAlloc(&p, bytes), CUDA_SUCCESS);
      ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
    }
    const CallSnapshot before;
    for (int i = 0; i < kPairs; ++i) {
      CUdeviceptr p = 0;
      ASSERT_EQ(cuMemAlloc(&p, bytes), CUDA_SUCCESS);
      ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
    }
    const CallSnapshot after;
    const long total = after.total - before.total;
    const int records = after.since(before, "cuEventRecord");
    const int queries = after.since(before, "cuEventQuery");
    SCOPED_TRACE(std::to_string(bytes) + " bytes, " + backend());
    if (backend() == "passthrough") {
      EXPECT_EQ(after.since(before, "cuMemAlloc_v2"), kPairs);
      EXPECT_EQ(after.since(before, "cuMemFree_v2"), kPairs);
      EXPECT_EQ(total, 2L * kPairs);
      continue;
    }
    // A batch closes at kBatchMaxBlocks blocks or kBatchMaxBytes bytes, whichever comes first.
    const int per_fence = static_cast<int>(std::max<std::size_t>(1, std::min(kFenceBatch, gpushim::kBatchMaxBytes / bytes)));
    EXPECT_LE(records, kPairs / per_fence + 1);
    EXPECT_LE(queries, kPairs / per_fence + 1);
    EXPECT_LE(after.since(before, "cuEventCreate"), 2);
    EXPECT_EQ(after.since(before, "cuCtxGetDevice"), 0);  // the context -> device answer is cached
    long allowed = records + queries + after.since(before, "cuEventCreate");
    if (backend() == "mempool") {
      EXPECT_EQ(after.since(before, "cuMemAllocFromPoolAsync"), kPairs);
      EXPECT_EQ(after.since(before, "cuMemFreeAsync"), kPairs);
      allowed += 2L * kPairs;
    } else {
      EXPECT_EQ(after.since(before, "cuMemCreate"), 0) << "a mapping per call";
      EXPECT_EQ(after.since(before, "cuMemUnmap"), 0) << "an unmapping per call";
    }
    EXPECT_EQ(total, allowed) << "driver calls other than the fences' events";
  }
}

// free-safety (docs/free-safety.md): a cuMemFree'd block goes back only after its fence completed.
TEST_F(RouterEndToEnd, FreedBlockIsNotHandedOutBeforeItsFenceCompletes) {
  if (backend() == "passthrough") GTEST_SKIP() << "passthrough frees with the driver's synchronizing cuMemFree";
  leave_legacy_order();
  fake_cuda_hold_gpu(1);  // every event recorded from now on stays pending
  const CallSnapshot before;
  std::set<CUdeviceptr> freed;
  std::vector<CUdeviceptr> live;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 150; ++i) {
      CUdeviceptr p = 0;
      ASSERT_EQ(cuMemAlloc(&p, 4 * KiB), CUDA_SUCCESS);
      ASSERT_EQ(freed.count(p), 0u) << "a block came back before the GPU finished with it (round " << round << ", "
                                    << i << "; records " << fake_cuda_calls("cuEventRecord") << ", queries "
                                    << fake_cuda_calls("cuEventQuery") << ", waits "
                                    << fake_cuda_calls("cuEventSynchronize") << ")";
      live.push_back(p);
    }
    for (CUdeviceptr p : live) {
      ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
      freed.insert(p);
    }
    live.clear();
  }
  const CallSnapshot held;
  EXPECT_GE(held.since(before, "cuEventRecord"), 1) << "fences were recorded while the GPU was busy";
  fake_cuda_hold_gpu(0);  // the GPU catches up: the blocks may come back now
  // Completed fences are collected when a batch closes (or an allocation misses): pairs close batches,
  // and the held fences are queried again. (Whether the arena then hands out those very addresses is
  // its policy; the limit test proves that fenced memory comes back.)
  const CallSnapshot released;
  ASSERT_NO_FATAL_FAILURE(small_pairs(1000, 4 * KiB));
  EXPECT_GT(CallSnapshot().since(released, "cuEventQuery"), 0);
  for (CUdeviceptr p : live) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

TEST_F(RouterEndToEnd, AsyncFreeIsReusableAtOnceOnItsStreamOnly) {
  CUstream s1 = nullptr, s2 = nullptr;
  ASSERT_EQ(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  CUdeviceptr p = 0, q = 0, r = 0;
  ASSERT_EQ(cuMemAllocAsync(&p, 8 * KiB, s1), CUDA_SUCCESS);
  EXPECT_TRUE(aligned(p));
  ASSERT_EQ(cuMemFreeAsync(p, s1), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&r, 8 * KiB, s2), CUDA_SUCCESS);
  if (backend() != "mempool") {
    EXPECT_NE(r, p) << "another stream got the block before s1 reached the free";
  }
  ASSERT_EQ(cuMemAllocAsync(&q, 8 * KiB, s1), CUDA_SUCCESS);
  if (backend() != "mempool") {
    EXPECT_EQ(q, p) << "stream order makes the block reusable at once on s1";
  }
  // Mixed pairs: cuMemFree of an async block, cuMemFreeAsync of a cuMemAlloc block.
  CUdeviceptr sync_block = 0;
  ASSERT_EQ(cuMemAlloc(&sync_block, 4 * KiB), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(q), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFreeAsync(sync_block, s2), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFreeAsync(r, s2), CUDA_SUCCESS);
  fake_cuda_hold_gpu(0);
  // Destroying a stream fences its list first; later fences must not touch it (the fake refuses).
  const CallSnapshot before;
  const int refused_before = fake_cuda_records_on_destroyed_streams();
  EXPECT_EQ(cuStreamDestroy(s1), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s2), CUDA_SUCCESS);
  const CallSnapshot destroyed;
  if (carves_memory()) {
    // s2's list holds sync_block and r: closing it on the way out records a fence on s2.
    EXPECT_GE(destroyed.since(before, "cuEventRecord"), 1) << "a stream's list was not fenced before it went";
  }
  for (int i = 0; i < 2 * static_cast<int>(kFenceBatch); ++i) {  // closes batches: fences after the destroy
    CUdeviceptr t = 0;
    ASSERT_EQ(cuMemAlloc(&t, 512), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(t), CUDA_SUCCESS);
  }
  EXPECT_EQ(fake_cuda_records_on_destroyed_streams(), refused_before) << "a fence was recorded on a destroyed stream";
}

// A stream's list hands back the newest block of the size asked for, and closes into the fence queue (an
// event on its stream) once it holds a batch.
TEST_F(RouterEndToEnd, AnAsyncFreeListTakesTheNewestBlockOfTheSizeAndClosesAtABatch) {
  if (backend() == "mempool") GTEST_SKIP() << "the pool orders its own frees: no gpushim list";
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  CUdeviceptr a = 0, b = 0, c = 0;
  ASSERT_EQ(cuMemAllocAsync(&a, 8 * KiB, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&b, 16 * KiB, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&c, 8 * KiB, s), CUDA_SUCCESS);
  for (CUdeviceptr p : {a, c, b}) ASSERT_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);  // b, 16 KiB, the newest
  CUdeviceptr got[3] = {};
  ASSERT_EQ(cuMemAllocAsync(&got[0], 8 * KiB, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&got[1], 16 * KiB, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&got[2], 8 * KiB, s), CUDA_SUCCESS);
  EXPECT_EQ(got[0], c) << "the newest 8 KiB block, past a newer one of another size";
  EXPECT_EQ(got[1], b);
  EXPECT_EQ(got[2], a);
  std::vector<CUdeviceptr> blocks(kFenceBatch);
  for (CUdeviceptr& p : blocks) ASSERT_EQ(cuMemAllocAsync(&p, 4 * KiB, s), CUDA_SUCCESS);
  const CallSnapshot before;
  for (std::size_t i = 0; i + 1 < blocks.size(); ++i) ASSERT_EQ(cuMemFreeAsync(blocks[i], s), CUDA_SUCCESS);
  EXPECT_EQ(CallSnapshot().since(before, "cuEventRecord"), 0) << "closed before it held a batch";
  ASSERT_EQ(cuMemFreeAsync(blocks.back(), s), CUDA_SUCCESS);
  EXPECT_EQ(CallSnapshot().since(before, "cuEventRecord"), 1) << "a full list is fenced by one event on its stream";
  CUdeviceptr again = 0;
  ASSERT_EQ(cuMemAllocAsync(&again, 4 * KiB, s), CUDA_SUCCESS);
  EXPECT_EQ(std::count(blocks.begin(), blocks.end(), again), 0) << "a closed list's block came back before its fence";
  for (CUdeviceptr p : {got[0], got[1], got[2], again}) EXPECT_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
  fake_cuda_hold_gpu(0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// One block larger than a batch's bytes stays on its stream's list, reused at once on that stream with no
// event; the stream's next free closes the list (one event), and its blocks wait for that fence.
TEST_F(RouterEndToEnd, ABlockLargerThanABatchStaysOnItsStreamUntilItsNextFree) {
  if (backend() == "mempool") GTEST_SKIP() << "the pool orders its own frees: no gpushim list";
  const std::size_t big = 2 * gpushim::kBatchMaxBytes;
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_gpu(1);
  CUdeviceptr a = 0, b = 0;
  ASSERT_EQ(cuMemAllocAsync(&a, big, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&b, big, s), CUDA_SUCCESS);
  const CallSnapshot before;
  for (int i = 0; i < 3; ++i) {  // a loop of large stream-ordered pairs: the same block, no fence
    ASSERT_EQ(cuMemFreeAsync(a, s), CUDA_SUCCESS);
    CUdeviceptr again = 0;
    ASSERT_EQ(cuMemAllocAsync(&again, big, s), CUDA_SUCCESS);
    EXPECT_EQ(again, a) << "a lone large block is reused at once on its stream";
  }
  EXPECT_EQ(CallSnapshot().since(before, "cuEventRecord"), 0) << "a lone large block closed its list";
  ASSERT_EQ(cuMemFreeAsync(a, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFreeAsync(b, s), CUDA_SUCCESS);
  EXPECT_EQ(CallSnapshot().since(before, "cuEventRecord"), 1) << "two large blocks: the list is fenced";
  CUdeviceptr c = 0;
  ASSERT_EQ(cuMemAllocAsync(&c, big, s), CUDA_SUCCESS);
  EXPECT_NE(c, a) << "a fenced block came back before its fence";
  EXPECT_NE(c, b) << "a fenced block came back before its fence";
  EXPECT_EQ(cuMemFreeAsync(c, s), CUDA_SUCCESS);
  fake_cuda_hold_gpu(0);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// Under passthrough a cuMemAllocAsync block is the driver pool's, and its cuMemFree does not wait for
// the GPU work that may still use it (natively, a program frees such a block with cudaFree only after
// that work). Freed on the per-thread default stream, such blocks were fenced in this thread's batch and
// came back to its returned list, which handed them to its next cuMemAlloc of their size: that caller's
// cuMemFree, expected to wait like a cuMemAlloc block's, then let the pool reuse the block while a
// kernel still read it (alloc_torture under passthrough on the H200: one overwritten word, thirteenth
// session). Completed fenced blocks of passthrough go back to the driver; a cuMemAlloc asks the driver,
// and its cuMemFree reaches the driver at once (joined to a returned list, in the twelfth session, such
// a free went to the thread's next allocation of its size with no driver call in between: millions of
// mismatched words in 3 of 27 runs).
TEST_F(RouterEndToEnd, UnderPassthroughACuMemAllocNeverGetsAPoolBlock) {
  if (backend() != "passthrough") GTEST_SKIP() << backend() << "'s blocks are gpushim's, freed through its fences";
  constexpr std::size_t kBlock = 2 * MiB;
  std::vector<CUdeviceptr> blocks(gpushim::kBatchMaxBytes / kBlock + 1);
  for (CUdeviceptr& p : blocks) ASSERT_EQ(cuMemAllocAsync(&p, kBlock, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
  const CallSnapshot before_frees;
  for (CUdeviceptr p : blocks) ASSERT_EQ(cuMemFreeAsync(p, CU_STREAM_PER_THREAD), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamSynchronize(CU_STREAM_PER_THREAD), CUDA_SUCCESS);
  // The batch closed at its byte cap (the last block opens the next) and its fence completed: its
  // blocks are back with the driver.
  EXPECT_EQ(CallSnapshot().since(before_frees, "cuMemFree_v2"), static_cast<int>(gpushim::kBatchMaxBytes / kBlock))
      << "the fenced pool blocks did not go back to the driver";
  const CallSnapshot before;
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, kBlock), CUDA_SUCCESS);
  EXPECT_EQ(CallSnapshot().since(before, "cuMemAlloc_v2"), 1)
      << "a cuMemAlloc was served a block of the driver's pool, whose cuMemFree does not wait for the GPU";
  const int frees = fake_cuda_calls("cuMemFree_v2");
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_calls("cuMemFree_v2"), frees + 1) << "the free did not reach the driver's cuMemFree";
}

TEST_F(RouterEndToEnd, PitchedRowsAreAligned) {
  CUdeviceptr p = 0;
  std::size_t pitch = 0;
  ASSERT_EQ(cuMemAllocPitch(&p, &pitch, 1000, 7, 4), CUDA_SUCCESS);
  EXPECT_TRUE(aligned(p));
  EXPECT_GE(pitch, 1000u);
  EXPECT_EQ(pitch % 256, 0u);
  fill(p, pitch * 7, 0x5a);
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(cuMemAllocPitch(&p, &pitch, 1000, 7, 3), CUDA_ERROR_INVALID_VALUE);  // element size 4, 8 or 16
}

TEST_F(RouterEndToEnd, GetInfoCountsCachedMemoryAsFree) {
  std::size_t free0 = 0, total0 = 0;
  ASSERT_EQ(cuMemGetInfo(&free0, &total0), CUDA_SUCCESS);
  EXPECT_GT(total0, 0u);
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, 64 * MiB), CUDA_SUCCESS);
  std::size_t free1 = 0, total1 = 0;
  ASSERT_EQ(cuMemGetInfo(&free1, &total1), CUDA_SUCCESS);
  EXPECT_LE(free1 + 64 * MiB, free0 + 4 * MiB) << "a live block is not free";
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  std::size_t free2 = 0, total2 = 0;
  ASSERT_EQ(cuMemGetInfo(&free2, &total2), CUDA_SUCCESS);
  EXPECT_EQ(total2, total0);
  EXPECT_GE(free2 + 4 * MiB, free0) << "freed and cached memory counts as free";
}

TEST_F(RouterEndToEnd, DoubleFreeIsInvalidValue) {
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, 4 * KiB), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(p), CUDA_ERROR_INVALID_VALUE);
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&p, 4 * KiB, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFreeAsync(p, s), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFreeAsync(p, s), CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

TEST_F(RouterEndToEnd, ForeignPointersGoToTheDriver) {
  CUdeviceptr managed = 0;
  ASSERT_EQ(cuMemAllocManaged(&managed, 4 * KiB, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);  // not served by gpushim
  const int frees = fake_cuda_calls("cuMemFree_v2");
  EXPECT_EQ(cuMemFree(managed), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_calls("cuMemFree_v2"), frees + 1);
  alignas(256) static char stranger[512];
  EXPECT_EQ(cuMemFree(reinterpret_cast<CUdeviceptr>(stranger)), CUDA_ERROR_INVALID_VALUE);  // the driver's answer
}

TEST_F(RouterEndToEnd, NoCurrentContextIsTheDriversError) {
  std::thread([] {
    ASSERT_EQ(cuCtxSetCurrent(nullptr), CUDA_SUCCESS);
    CUdeviceptr p = 0;
    EXPECT_EQ(cuMemAlloc(&p, 256), CUDA_ERROR_INVALID_CONTEXT);
  }).join();
}

TEST_F(RouterEndToEnd, ManyThreadsKeepTheirBlocks) {
  std::vector<std::thread> threads;
  std::vector<int> failures(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([t, &failures] {
      std::mt19937 random(t);
      struct Block {
        CUdeviceptr p;
        std::size_t bytes;
        unsigned char tag;  // what this thread wrote: a block handed to two threads holds the other's
      };
      std::vector<Block> live;
      for (int i = 0; i < 3000; ++i) {
        if (live.size() < 32 && (live.empty() || random() % 2)) {
          const std::size_t bytes = std::size_t{1} << (8 + random() % 13);  // 256 B .. 1 MiB
          CUdeviceptr p = 0;
          if (cuMemAlloc(&p, bytes) != CUDA_SUCCESS) {
            ++failures[t];
            continue;
          }
          const auto tag = static_cast<unsigned char>(t * 31 + i);
          fill(p, bytes, tag);
          live.push_back({p, bytes, tag});
          continue;
        }
        const std::size_t k = random() % live.size();
        const Block block = live[k];
        if (!holds(block.p, block.bytes, block.tag) || cuMemFree(block.p) != CUDA_SUCCESS) ++failures[t];
        live[k] = live.back();
        live.pop_back();
      }
      for (const Block& block : live)
        if (!holds(block.p, block.bytes, block.tag) || cuMemFree(block.p) != CUDA_SUCCESS) ++failures[t];
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

namespace {
bool two_devices() {
  int count = 0;
  EXPECT_EQ(cuDeviceGetCount(&count), CUDA_SUCCESS);
  return count >= 2;
}
// The primary contexts of fake devices 0 and 1 (FAKE_CUDA_DEVICES=2).
void retain_two_primary_contexts(CUcontext* ctx0, CUcontext* ctx1) {
  CUdevice dev0 = 0, dev1 = 0;
  ASSERT_EQ(cuDeviceGet(&dev0, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuDeviceGet(&dev1, 1), CUDA_SUCCESS);
  ASSERT_EQ(cuDevicePrimaryCtxRetain(ctx0, dev0), CUDA_SUCCESS);
  ASSERT_EQ(cuDevicePrimaryCtxRetain(ctx1, dev1), CUDA_SUCCESS);
}
}  // namespace

// With FAKE_CUDA_DEVICES=2 (tests/router_e2e.cmake): memory comes from the current context's device,
// a stream's allocations from the stream's device, and any block can be freed from any context.
TEST_F(RouterEndToEnd, TwoDevicesEachServeTheirOwnContext) {
  if (!two_devices()) GTEST_SKIP() << "one fake device in this run";
  CUcontext ctx0 = nullptr, ctx1 = nullptr;
  ASSERT_NO_FATAL_FAILURE(retain_two_primary_contexts(&ctx0, &ctx1));
  ASSERT_EQ(cuCtxSetCurrent(ctx1), CUDA_SUCCESS);
  CUdeviceptr on1 = 0, on0 = 0, async1 = 0;
  ASSERT_EQ(cuMemAlloc(&on1, 8 * MiB), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_device_of(on1), 1) << "device 1's memory serves device 1's context";
  CUstream stream1 = nullptr;
  ASSERT_EQ(cuStreamCreate(&stream1, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx0), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&async1, 8 * MiB, stream1), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_device_of(async1), 1) << "an async allocation comes from its stream's device";
  ASSERT_EQ(cuMemAlloc(&on0, 4 * KiB), CUDA_SUCCESS);
  EXPECT_EQ(fake_cuda_device_of(on0), 0);
  fill(on1, 8 * MiB, 1);
  fill(on0, 4 * KiB, 2);
  EXPECT_TRUE(holds(on1, 8 * MiB, 1));
  // Frees from the "wrong" context: the router finds each block's device itself.
  EXPECT_EQ(cuMemFree(on1), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFreeAsync(async1, stream1), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx1), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(on0), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(stream1), CUDA_SUCCESS);
  ASSERT_EQ(cuCtxSetCurrent(ctx0), CUDA_SUCCESS);
}

// Under GPUSHIM_LIMIT (tests/router_e2e.cmake sets E2E_LIMIT_BYTES to the same value).
TEST_F(RouterEndToEnd, LimitGivesOutOfMemoryAndFreedMemoryComesBack) {
  const char* limit_text = std::getenv("E2E_LIMIT_BYTES");
  if (!limit_text) GTEST_SKIP() << "no GPUSHIM_LIMIT in this run";
  leave_legacy_order();
  const std::size_t limit = std::strtoull(limit_text, nullptr, 10);
  // Under GPUSHIM_PEERS the limit holds per device, and this device's blocks may lie on all of them.
  const char* devices_text = std::getenv("E2E_LIMIT_DEVICES");
  const std::size_t devices = devices_text ? std::strtoull(devices_text, nullptr, 10) : 1;
  constexpr std::size_t kBlock = 32 * MiB;
  std::vector<CUdeviceptr> live;
  CUresult rc = CUDA_SUCCESS;
  testing::internal::CaptureStderr();  // the out-of-memory report
  while (live.size() <= devices * limit / kBlock + 2) {
    CUdeviceptr p = 0;
    rc = cuMemAlloc(&p, kBlock);
    if (rc != CUDA_SUCCESS) break;
    live.push_back(p);
  }
  const std::string report = testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_NE(report.find("out of memory on device 0"), std::string::npos) << report;
  // Under GPUSHIM_PEERS (router_e2e_peers_limit), the report says which devices hold the memory.
  if (std::getenv("E2E_EXPECT_PLACEMENT")) {
    EXPECT_NE(report.find("memory mapped by device: device 0: "), std::string::npos) << report;
    EXPECT_NE(report.find(", device 1: "), std::string::npos) << report;
  }
  EXPECT_LE(live.size() * kBlock, devices * limit);
  EXPECT_GE(live.size(), devices * limit / kBlock / 2) << "the cap bit far below the limit";
  if (devices > 1) {
    EXPECT_GT(live.size() * kBlock, limit) << "the cap is per device, not the total";
  }
  if (carves_memory()) {
    for (std::size_t d = 0; d < devices; ++d)
      EXPECT_LE(fake_cuda_physical_bytes(static_cast<int>(d)), limit) << "device " << d << " over its cap";
  }
  std::size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cuMemGetInfo(&free_bytes, &total), CUDA_SUCCESS);
  EXPECT_EQ(total, limit);
  // Free is what is left under the cap, not what the device has left: the live blocks are not free.
  // (Under GPUSHIM_PEERS the blocks may exceed one device's cap; free then counts all of them against it.)
  EXPECT_LE(free_bytes + std::min(live.size() * kBlock, limit), limit)
      << "free " << free_bytes << " with " << live.size() << " live blocks of " << kBlock;
  // Freed while the GPU is busy: only waiting for the fences (memory pressure) gets the memory back.
  fake_cuda_hold_gpu(1);
  for (CUdeviceptr p : live) ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  live.clear();
  CUdeviceptr big = 0;
  EXPECT_EQ(cuMemAlloc(&big, limit / 2), CUDA_SUCCESS);
  fake_cuda_hold_gpu(0);
  if (big) {
    EXPECT_EQ(cuMemFree(big), CUDA_SUCCESS);
  }
}


namespace {
// router_e2e_release_delay's settings (tests/router_e2e.cmake): a 128 MiB threshold, 32 MiB blocks, and
// the delay, which E2E_RELEASE_DELAY_MS gives the test (0 where it is unset: the test then skips).
constexpr std::size_t kThreshold = 128 * MiB, kBlock = 32 * MiB;
std::chrono::milliseconds release_delay() {
  const char* text = std::getenv("E2E_RELEASE_DELAY_MS");
  return std::chrono::milliseconds(text ? std::strtoul(text, nullptr, 10) : 0);
}
// Frees 8 blocks of 32 MiB in the current context, on `device` (too few frees for an idle check of their
// own), so that 256 MiB wait above the threshold, within twice it (what the delay may keep).
void free_above_the_threshold(int device = 0) {
  std::vector<CUdeviceptr> large(8);
  for (CUdeviceptr& p : large) ASSERT_EQ(cuMemAlloc(&p, kBlock), CUDA_SUCCESS);
  for (CUdeviceptr p : large) ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  ASSERT_GT(fake_cuda_physical_bytes(device), kThreshold + kBlock) << "nothing above the threshold to give back";
}
// A context synchronization every two delays, at most `rounds` of them, until device `device` holds at
// most `bound` bytes; returns what it holds then. `context`: the one cuCtxSynchronize_v2 names (nullptr:
// cuCtxSynchronize, the current one). The first synchronization may only start the arena's idle window.
std::size_t synchronize_until_at_most(std::size_t bound, std::chrono::milliseconds delay, int rounds,
                                      int device = 0, CUcontext context = nullptr) {
  std::size_t physical = fake_cuda_physical_bytes(device);
  for (int round = 0; round < rounds && physical > bound; ++round) {
    std::this_thread::sleep_for(2 * delay);
    const CUresult rc = context ? cuCtxSynchronize_v2(context) : cuCtxSynchronize();
    EXPECT_EQ(rc, CUDA_SUCCESS);
    if (rc != CUDA_SUCCESS) break;
    physical = fake_cuda_physical_bytes(device);
  }
  return physical;
}
}  // namespace

// Memory above GPUSHIM_VMM_RELEASE_THRESHOLD is kept for GPUSHIM_VMM_RELEASE_DELAY, then given back,
// also where the program has moved on to blocks that never reach the arena (the slabs and the thread
// caches serve them): the router asks the backend every few thousand frees (Allocator::release_idle).
// Runs as router_e2e_release_delay.* (threshold 128 MiB, delay 50 ms: the 256 MiB freed is within twice
// the threshold, which the delay may keep).
TEST_F(RouterEndToEnd, IdleMemoryGoesBackAfterTheDelayWhileOnlySmallBlocksAreFreed) {
  const auto delay = release_delay();
  if (delay.count() == 0) GTEST_SKIP() << "runs as router_e2e_release_delay";
  std::vector<CUdeviceptr> large(8);
  for (CUdeviceptr& p : large) ASSERT_EQ(cuMemAlloc(&p, kBlock), CUDA_SUCCESS);
  const auto freed_at = std::chrono::steady_clock::now();
  for (CUdeviceptr p : large) ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  EXPECT_GE(fake_cuda_physical_bytes(0), large.size() * kBlock) << "given back before the delay";
  // Small pairs only, as a program's next phase might be: none of these frees reaches the arena.
  std::size_t physical = fake_cuda_physical_bytes(0);
  while (physical > kThreshold + kBlock && std::chrono::steady_clock::now() - freed_at < 40 * delay) {
    ASSERT_NO_FATAL_FAILURE(small_pairs(1000));
    physical = fake_cuda_physical_bytes(0);
  }
  EXPECT_LE(physical, kThreshold + kBlock) << "idle memory above the threshold stayed mapped";
  EXPECT_GE(physical, kThreshold) << "memory below the threshold was given back";
  EXPECT_GE(std::chrono::steady_clock::now() - freed_at, delay) << "given back before the delay";
}

// A stream's async free list with no free for GPUSHIM_STREAM_LIST_IDLE is closed behind a device fence by
// the router's idle check (every 4,096 frees of any thread), so a block parked there (here a lone block
// larger than a batch, which a free does not close) reaches the backend, and past the release threshold
// the driver. A stream that keeps freeing keeps its list. Runs as router_e2e_stream_list_idle.* (idle
// 50 ms, release threshold and delay 0: memory the arena gets back goes to the driver at once).
TEST_F(RouterEndToEnd, AQuietStreamsListIsFencedAndGivenBackAfterTheIdleTime) {
  const char* idle_text = std::getenv("E2E_STREAM_LIST_IDLE_MS");
  if (!idle_text) GTEST_SKIP() << "runs as router_e2e_stream_list_idle";
  const auto idle = std::chrono::milliseconds(std::strtoul(idle_text, nullptr, 10));
  const std::size_t big = 2 * gpushim::kBatchMaxBytes;
  CUstream quiet = nullptr, busy = nullptr;
  ASSERT_EQ(cuStreamCreate(&quiet, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&busy, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUdeviceptr parked = 0, busy_block = 0;
  ASSERT_EQ(cuMemAllocAsync(&parked, big, quiet), CUDA_SUCCESS);
  ASSERT_EQ(cuMemAllocAsync(&busy_block, 8 * KiB, busy), CUDA_SUCCESS);
  const std::size_t physical_with_parked = fake_cuda_physical_bytes(0);
  fake_cuda_hold_gpu(1);  // the closed list's fence stays pending: its block cannot come back early
  ASSERT_EQ(cuMemFreeAsync(parked, quiet), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFreeAsync(busy_block, busy), CUDA_SUCCESS);
  // Small cuMemAlloc pairs make the idle checks; `busy` frees between them.
  const auto freed_at = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - freed_at < 4 * idle) {
    ASSERT_NO_FATAL_FAILURE(small_pairs(1000));
    CUdeviceptr again = 0;
    ASSERT_EQ(cuMemAllocAsync(&again, 8 * KiB, busy), CUDA_SUCCESS);
    ASSERT_EQ(again, busy_block) << "the list of a stream that kept freeing was closed";
    ASSERT_EQ(cuMemFreeAsync(again, busy), CUDA_SUCCESS);
  }
  CUdeviceptr taken = 0;
  ASSERT_EQ(cuMemAllocAsync(&taken, big, quiet), CUDA_SUCCESS);
  EXPECT_NE(taken, parked) << "a quiet stream's list still held its block after the idle time";
  ASSERT_EQ(cuMemFree(taken), CUDA_SUCCESS);
  fake_cuda_hold_gpu(0);
  ASSERT_NO_FATAL_FAILURE(small_pairs(2 * static_cast<int>(gpushim::kFreesPerIdleCheck)));  // polls the fences
  EXPECT_LE(fake_cuda_physical_bytes(0), physical_with_parked - big / 2)
      << "the parked block did not go back to the driver past the release threshold";
  EXPECT_EQ(cuStreamDestroy(quiet), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(busy), CUDA_SUCCESS);
}

// As the GPU test test_apps/stream_list_idle_check.cu runs it: the quiet stream's list holds a block
// that its own running work still uses (solo: the stream carries work alone), the list ages out behind a
// device fence, legacy work ends solo, the work completes, and the block must then serve another
// stream's allocation without the process growing (parked, it is invisible there).
TEST_F(RouterEndToEnd, AQuietStreamsListBehindItsRunningWorkIsGivenBackOnceTheWorkEnds) {
  const char* idle_text = std::getenv("E2E_STREAM_LIST_IDLE_MS");
  if (!idle_text) GTEST_SKIP() << "runs as router_e2e_stream_list_idle";
  const auto idle = std::chrono::milliseconds(std::strtoul(idle_text, nullptr, 10));
  const std::size_t big = 2 * gpushim::kBatchMaxBytes;
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUdeviceptr a = 0;
  ASSERT_EQ(cuMemAllocAsync(&a, big, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemsetD8Async(a, 1, big, s), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamSynchronize(s), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 1);  // the reader
  ASSERT_EQ(cuMemsetD8Async(a, 2, big, s), CUDA_SUCCESS);
  ASSERT_EQ(cuMemFreeAsync(a, s), CUDA_SUCCESS);
  const auto freed_at = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - freed_at < 4 * idle) ASSERT_NO_FATAL_FAILURE(small_pairs(1000, 4 * KiB));
  CUdeviceptr b = 0;
  ASSERT_EQ(cuMemAlloc(&b, big), CUDA_SUCCESS);
  EXPECT_NE(b, a) << "handed out while its stream's work still used it";
  const std::size_t physical_with_both = fake_cuda_physical_bytes(0);
  ASSERT_EQ(cuMemsetD8Async(b, 3, big, CU_STREAM_LEGACY), CUDA_SUCCESS);  // legacy work: solo ends
  fake_cuda_hold_stream(s, 0);
  ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
  ASSERT_NO_FATAL_FAILURE(small_pairs(2 * static_cast<int>(gpushim::kFreesPerIdleCheck), 4 * KiB));
  CUstream t = nullptr;
  ASSERT_EQ(cuStreamCreate(&t, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUdeviceptr c = 0;
  ASSERT_EQ(cuMemAllocAsync(&c, big, t), CUDA_SUCCESS);
  EXPECT_LT(fake_cuda_physical_bytes(0), physical_with_both + big / 2)
      << "the aged-out block did not serve another stream once its stream's work ended";
  EXPECT_EQ(cuMemFreeAsync(c, t), CUDA_SUCCESS);
  EXPECT_EQ(cuMemFree(b), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(t), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// A program that stops freeing (PyTorch after torch.cuda.empty_cache(): a few frees, then only its own
// cache) still synchronizes the device: the idle checks run after each cuCtxSynchronize too, so memory
// above the threshold goes back once the delay has passed, without another free. Runs as
// router_e2e_release_delay.*.
TEST_F(RouterEndToEnd, IdleMemoryGoesBackAfterTheDelayAtAContextSynchronizeWithoutFrees) {
  const auto delay = release_delay();
  if (delay.count() == 0) GTEST_SKIP() << "runs as router_e2e_release_delay";
  ASSERT_NO_FATAL_FAILURE(free_above_the_threshold());
  const std::size_t physical = synchronize_until_at_most(kThreshold + kBlock, delay, 4);
  EXPECT_LE(physical, kThreshold + kBlock) << "idle memory above the threshold stayed mapped through synchronizations";
  EXPECT_GE(physical, kThreshold) << "memory below the threshold was given back";
}

// Fenced frees come back to the thread that freed them (its returned list, up to two batches' worth),
// where the arena does not see them: a thread that stopped allocating kept them. A context
// synchronization gives them to the arena once its release is due counting them
// (router.cpp, gather_idle_blocks), and they go back after the delay like the arena's own idle memory.
// Two streams carry the blocks' work, so the frees are fenced (one alone would be solo: reused at once).
// Runs as router_e2e_release_delay_returned_list.*.
TEST_F(RouterEndToEnd, AContextSynchronizeGivesBackWhatAThreadsReturnedListHolds) {
  const auto delay = release_delay();
  if (delay.count() == 0) GTEST_SKIP() << "runs as router_e2e_release_delay_returned_list";
  CUstream s = nullptr, t = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamCreate(&t, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  fake_cuda_hold_stream(s, 1);
  fake_cuda_hold_stream(t, 1);
  std::vector<CUdeviceptr> large(8);
  for (CUdeviceptr& p : large) {
    ASSERT_EQ(cuMemAlloc(&p, kBlock), CUDA_SUCCESS);
    ASSERT_EQ(cuMemsetD8Async(p, 1, kBlock, s), CUDA_SUCCESS);
    ASSERT_EQ(cuMemsetD8Async(p, 2, kBlock, t), CUDA_SUCCESS);
  }
  for (CUdeviceptr p : large) ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);  // fenced: the work is queued
  const std::size_t physical_freed = fake_cuda_physical_bytes(0);
  ASSERT_GE(physical_freed, large.size() * kBlock);
  fake_cuda_hold_stream(s, 0);
  fake_cuda_hold_stream(t, 0);
  // The synchronizations poll the fences (their blocks come back to this thread's list), then give the
  // list to the arena once its release is due; what stayed idle through the delay goes back after.
  const std::size_t physical = synchronize_until_at_most(kThreshold + kBlock, delay, 6);
  EXPECT_LE(physical, kThreshold + kBlock) << "blocks a thread's returned list held stayed mapped";
  EXPECT_GE(physical, kThreshold) << "memory below the threshold was given back";
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(t), CUDA_SUCCESS);
}

// Threads that stopped allocating, alive and idle, keep free blocks in their thread caches' size classes
// (up to 4 MiB a thread), where the arena does not see them. A context synchronization hands them to the
// arena once its release is due counting them (router.cpp, gather_idle_blocks), and they go back after
// the delay. Threshold 0 here: the process must come back to what it held before the threads. Runs as
// router_e2e_release_delay_idle_threads.*.
TEST_F(RouterEndToEnd, AContextSynchronizeGivesBackWhatIdleThreadsCache) {
  const auto delay = release_delay();
  if (delay.count() == 0) GTEST_SKIP() << "runs as router_e2e_release_delay_idle_threads";
  const std::size_t physical_before = fake_cuda_physical_bytes(0);
  // Two blocks of each of two sizes stay in a thread's classes (2 MiB a class); the other two go to the arena.
  constexpr std::size_t kSizes[2] = {MiB, 960 * KiB};
  constexpr int kThreads = 4;
  std::atomic<int> stopped{0}, failures{0};
  std::atomic<bool> idle_over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      CUdeviceptr blocks[6] = {};
      for (int i = 0; i < 6; ++i)
        if (cuMemAlloc(&blocks[i], kSizes[i % 2]) != CUDA_SUCCESS) failures.fetch_add(1);
      for (CUdeviceptr p : blocks)
        if (p && cuMemFree(p) != CUDA_SUCCESS) failures.fetch_add(1);
      stopped.fetch_add(1);
      while (!idle_over.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
  }
  while (stopped.load() < kThreads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const std::size_t physical_stopped = fake_cuda_physical_bytes(0);
  const std::size_t physical = synchronize_until_at_most(physical_before, delay, 6);
  idle_over.store(true);
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GE(physical_stopped, physical_before + kThreads * 2 * (kSizes[0] + kSizes[1]))
      << "the threads' caches kept less than their classes hold: the test proves nothing";
  EXPECT_LE(physical, physical_before) << "blocks idle threads cached stayed mapped";
}

// A stream's or an event's synchronization never gives memory back: the unmap would first wait for the
// whole context, which those calls never do (router/router.h, after_context_synchronize).
TEST_F(RouterEndToEnd, AStreamSynchronizeGivesNothingBack) {
  const auto delay = release_delay();
  if (delay.count() == 0) GTEST_SKIP() << "runs as router_e2e_release_delay";
  ASSERT_NO_FATAL_FAILURE(free_above_the_threshold());
  const std::size_t physical = fake_cuda_physical_bytes(0);
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUevent e = nullptr;
  ASSERT_EQ(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
  for (int round = 0; round < 4; ++round) {
    std::this_thread::sleep_for(2 * delay);
    ASSERT_EQ(cuEventRecord(e, s), CUDA_SUCCESS);
    ASSERT_EQ(cuStreamSynchronize(s), CUDA_SUCCESS);
    ASSERT_EQ(cuEventSynchronize(e), CUDA_SUCCESS);
  }
  EXPECT_EQ(fake_cuda_physical_bytes(0), physical) << "a stream or event synchronization unmapped";
  EXPECT_EQ(cuEventDestroy(e), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
  // The test's own check: what the stream synchronizations kept was due, as context synchronizations
  // show (the first may only start the arena's idle window).
  for (int round = 0; round < 4 && fake_cuda_physical_bytes(0) == physical; ++round) {
    ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
    std::this_thread::sleep_for(2 * delay);
  }
  EXPECT_LT(fake_cuda_physical_bytes(0), physical) << "nothing was due: the test proves nothing";
}

// A context synchronization gives back only its own device's idle memory: another device's give-back would
// wait for that device's context, which the program did not synchronize. cuCtxSynchronize is the current
// context's; cuCtxSynchronize_v2 names its context. Runs as router_e2e_release_delay_two_devices.*.
TEST_F(RouterEndToEnd, AContextSynchronizeGivesBackOnlyItsOwnDevicesMemory) {
  const auto delay = release_delay();
  if (delay.count() == 0) GTEST_SKIP() << "runs as router_e2e_release_delay_two_devices";
  if (!two_devices()) GTEST_SKIP() << "one fake device in this run";
  CUcontext ctx0 = nullptr, ctx1 = nullptr;
  ASSERT_NO_FATAL_FAILURE(retain_two_primary_contexts(&ctx0, &ctx1));
  ASSERT_EQ(cuCtxSetCurrent(ctx1), CUDA_SUCCESS);
  ASSERT_NO_FATAL_FAILURE(free_above_the_threshold(1));
  const std::size_t physical1 = fake_cuda_physical_bytes(1);
  ASSERT_EQ(cuCtxSetCurrent(ctx0), CUDA_SUCCESS);
  CUdeviceptr on0 = 0;  // device 0 served too, so that its synchronizations run checks of their own
  ASSERT_EQ(cuMemAlloc(&on0, 4 * KiB), CUDA_SUCCESS);
  for (int round = 0; round < 4; ++round) {
    std::this_thread::sleep_for(2 * delay);
    ASSERT_EQ(cuCtxSynchronize(), CUDA_SUCCESS);
    ASSERT_EQ(cuCtxSynchronize_v2(ctx0), CUDA_SUCCESS);
  }
  EXPECT_EQ(fake_cuda_physical_bytes(1), physical1) << "device 0's synchronization gave back device 1's memory";
  // Named, from device 0's current context.
  const std::size_t physical = synchronize_until_at_most(kThreshold + kBlock, delay, 4, 1, ctx1);
  EXPECT_LE(physical, kThreshold + kBlock) << "device 1's own synchronization gave nothing back";
  EXPECT_EQ(cuMemFree(on0), CUDA_SUCCESS);
}

TEST_F(RouterEndToEnd, ZeroByteAsyncAllocationAndNullAsyncFreeAreTheDriversAnswers) {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, 0), CUDA_SUCCESS);
  CUdeviceptr p = 0;
  EXPECT_EQ(cuMemAllocAsync(&p, 0, s), CUDA_ERROR_INVALID_VALUE);  // the driver refuses 0 bytes
  EXPECT_EQ(p, 0u);
  EXPECT_EQ(cuMemFreeAsync(0, s), CUDA_SUCCESS);  // and frees nothing, successfully
  EXPECT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

TEST_F(RouterEndToEnd, FreeingAnInteriorPointerIsTheDriversError) {
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, 4 * KiB), CUDA_SUCCESS);
  fill(p, 4 * KiB, 0x3c);
  EXPECT_EQ(cuMemFree(p + 256), CUDA_ERROR_INVALID_VALUE);  // cuMemFree takes only what cuMemAlloc returned
  EXPECT_TRUE(holds(p, 4 * KiB, 0x3c)) << "the block was touched by a refused free";
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS) << "the block must still be live";
  EXPECT_EQ(cuMemFree(p), CUDA_ERROR_INVALID_VALUE);
}

// Blocks one thread allocated, freed by another thread that then exits with its batch still open (fewer
// blocks than a batch): the batch becomes the device's orphans, fenced with the next batch any thread
// closes, and the memory is free again (cuMemGetInfo counts it). Leaked orphans would stay "in use".
TEST_F(RouterEndToEnd, BlocksFreedByAThreadThatExitsComeBack) {
  if (!carves_memory()) GTEST_SKIP() << backend() << " gives frees straight to the driver or its pool";
  leave_legacy_order();
  constexpr std::size_t kBytes = 1 * MiB;
  constexpr int kBlocks = 16;  // well under a batch: the worker's batch is still open when it exits
  static_assert(kBlocks < static_cast<int>(kFenceBatch) && kBlocks * kBytes < gpushim::kBatchMaxBytes,
                "the worker must exit with a pending batch");
  std::vector<CUdeviceptr> mine(kBlocks);
  for (CUdeviceptr& p : mine) ASSERT_EQ(cuMemAlloc(&p, kBytes), CUDA_SUCCESS);
  std::size_t free_while_live = 0, total = 0;
  ASSERT_EQ(cuMemGetInfo(&free_while_live, &total), CUDA_SUCCESS);
  std::vector<CUresult> results(kBlocks, CUDA_ERROR_UNKNOWN);
  std::thread([&] {
    for (int i = 0; i < kBlocks; ++i) results[i] = cuMemFree(mine[i]);
  }).join();
  for (int i = 0; i < kBlocks; ++i) EXPECT_EQ(results[i], CUDA_SUCCESS) << "free from another thread, block " << i;
  EXPECT_EQ(cuMemFree(mine[0]), CUDA_ERROR_INVALID_VALUE) << "freed by the worker: a second free is a double free";
  // Close this thread's own batches (small blocks), which fences the orphans with them.
  for (int i = 0; i < 2 * static_cast<int>(kFenceBatch) + 1; ++i) {
    CUdeviceptr t = 0;
    ASSERT_EQ(cuMemAlloc(&t, 512), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(t), CUDA_SUCCESS);
  }
  std::size_t free_after = 0;
  ASSERT_EQ(cuMemGetInfo(&free_after, &total), CUDA_SUCCESS);
  EXPECT_GE(free_after, free_while_live + kBlocks * kBytes) << "the exited thread's frees never came back";
}

// A thread that freed fewer blocks than close a batch, and still runs, holds them in its open batch,
// which only it adds to (under a lock whose other side pays a membarrier: router/thread_state.h). The
// other threads' sweeps must still reach it: cuMemGetInfo counts its blocks as free, and under
// GPUSHIM_LIMIT an allocation that finds no memory closes it, waits for its fence and takes them.
TEST_F(RouterEndToEnd, AnotherThreadsOpenBatchIsCountedAndTakenUnderPressure) {
  if (!carves_memory()) GTEST_SKIP() << backend() << " gives frees straight to the driver or its pool";
  leave_legacy_order();
  constexpr std::size_t kBytes = 8 * MiB;  // under kAskBeforeFencingBytes: each free goes to the batch
  constexpr int kWorkerBlocks = 4;         // 32 MiB: under a batch's byte cap, so the batch stays open
  static_assert(kWorkerBlocks * kBytes < gpushim::kBatchMaxBytes, "the worker's batch must stay open");
  std::vector<CUdeviceptr> worker_blocks(kWorkerBlocks);
  for (CUdeviceptr& p : worker_blocks) ASSERT_EQ(cuMemAlloc(&p, kBytes), CUDA_SUCCESS);
  // Under the limit: fill it, so that only the worker's blocks can serve what comes after.
  const bool limited = std::getenv("E2E_LIMIT_BYTES") != nullptr;
  std::vector<CUdeviceptr> filler;
  if (limited) {
    testing::internal::CaptureStderr();  // the out-of-memory report
    for (;;) {
      CUdeviceptr p = 0;
      if (cuMemAlloc(&p, kBytes) != CUDA_SUCCESS) break;
      filler.push_back(p);
    }
    testing::internal::GetCapturedStderr();
  }
  std::size_t free_before = 0, total = 0;
  ASSERT_EQ(cuMemGetInfo(&free_before, &total), CUDA_SUCCESS);

  std::mutex m;
  std::condition_variable changed;
  bool freed = false, done = false;
  std::vector<CUresult> results(kWorkerBlocks, CUDA_ERROR_UNKNOWN);
  std::thread worker([&] {
    for (int i = 0; i < kWorkerBlocks; ++i) results[i] = cuMemFree(worker_blocks[i]);
    std::unique_lock<std::mutex> lock(m);
    freed = true;
    changed.notify_all();
    changed.wait(lock, [&] { return done; });  // alive, its batch open, until the checks are over
  });
  {
    std::unique_lock<std::mutex> lock(m);
    changed.wait(lock, [&] { return freed; });
  }
  for (int i = 0; i < kWorkerBlocks; ++i) EXPECT_EQ(results[i], CUDA_SUCCESS) << "block " << i;
  std::size_t free_after = 0;
  EXPECT_EQ(cuMemGetInfo(&free_after, &total), CUDA_SUCCESS);
  EXPECT_GE(free_after, free_before + kWorkerBlocks * kBytes) << "the worker's open batch was not counted as free";
  std::vector<CUdeviceptr> taken;
  if (limited) {
    testing::internal::CaptureStderr();
    for (int i = 0; i < kWorkerBlocks; ++i) {
      CUdeviceptr p = 0;
      EXPECT_EQ(cuMemAlloc(&p, kBytes), CUDA_SUCCESS) << "block " << i << " of the worker's open batch not taken";
      if (p) taken.push_back(p);
    }
    const std::string report = testing::internal::GetCapturedStderr();
    EXPECT_EQ(report.find("out of memory"), std::string::npos) << report;
  }
  {
    std::lock_guard<std::mutex> lock(m);
    done = true;
    changed.notify_all();
  }
  worker.join();
  for (CUdeviceptr p : taken) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
  for (CUdeviceptr p : filler) EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS);
}

// A forked child has none of the parent's devices, contexts or blocks: a parent's pointer is a stranger
// to it, so gpushim hands its free to the driver, whose answer the child gets (router/after_fork.cpp).
TEST_F(RouterEndToEnd, ForkedChildPassesTheParentsBlocksToTheDriver) {
  CUdeviceptr p = 0;
  ASSERT_EQ(cuMemAlloc(&p, 4 * KiB), CUDA_SUCCESS);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int failures = 0;
    const int frees = fake_cuda_calls("cuMemFree_v2");
    cuMemFree(p);  // whatever the driver answers
    if (fake_cuda_calls("cuMemFree_v2") != frees + 1) failures |= 1;  // gpushim answered for a block it lost
    CUdeviceptr q = 0;
    if (cuMemAlloc(&q, 4 * KiB) != CUDA_SUCCESS || cuMemFree(q) != CUDA_SUCCESS) failures |= 2;
    _exit(failures);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status) & 1, 0) << "the child's free of a parent's block did not reach the driver";
  EXPECT_EQ(WEXITSTATUS(status) & 2, 0) << "the child could not allocate and free";
  EXPECT_EQ(cuMemFree(p), CUDA_SUCCESS) << "the parent keeps its block";
}

// GPUSHIM_TRACE through the preloaded library: a child process (this program again, E2E_TRACE_CHILD set,
// see trace_child_workload below) allocates and frees under GPUSHIM_TRACE and exits; the trace it leaves
// holds every event, with this run's backend, and the end record of a clean close.
constexpr std::size_t kTracedBytes = 12345, kTracedAsyncBytes = 777;
constexpr int kTracedBlocks = 5;

int trace_child_workload() {
  if (!std::getenv("E2E_TRACE_CHILD")) return 0;
  int failures = 0;
  if (cuInit(0) != CUDA_SUCCESS) std::_Exit(10);
  std::vector<CUdeviceptr> blocks(kTracedBlocks);
  for (CUdeviceptr& p : blocks) failures += cuMemAlloc(&p, kTracedBytes) != CUDA_SUCCESS;
  for (CUdeviceptr p : blocks) failures += cuMemFree(p) != CUDA_SUCCESS;
  CUstream s = nullptr;
  CUdeviceptr a = 0;
  failures += cuStreamCreate(&s, 0) != CUDA_SUCCESS;
  failures += cuMemAllocAsync(&a, kTracedAsyncBytes, s) != CUDA_SUCCESS;
  failures += cuMemFreeAsync(a, s) != CUDA_SUCCESS;
  failures += cuStreamDestroy(s) != CUDA_SUCCESS;
  std::exit(failures);  // exit(), not _exit(): the trace is closed at exit
}
const int g_trace_child = trace_child_workload();

gpushim::tracing::BackendId expected_trace_backend() {
  using gpushim::tracing::BackendId;
  const std::map<std::string, BackendId> ids = {
      {"passthrough", BackendId::passthrough}, {"vmm", BackendId::vmm},         {"buddy", BackendId::buddy},
      {"slab", BackendId::slab},               {"mempool", BackendId::mempool}, {"tiered", BackendId::tiered}};
  return ids.at(backend());
}

TEST_F(RouterEndToEnd, TraceRecordsEveryEventOfAPreloadedProgram) {
  namespace format = gpushim::tracing::format;
  using gpushim::tracing::EventKind;
  const std::string path = "/tmp/gpushim_e2e_trace_" + std::to_string(getpid()) + "_" + backend() + ".trace";
  std::remove(path.c_str());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setenv("E2E_TRACE_CHILD", "1", 1);
    setenv("GPUSHIM_TRACE", path.c_str(), 1);
    char* const argv[] = {const_cast<char*>("/proc/self/exe"), nullptr};
    execv("/proc/self/exe", argv);
    _exit(127);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "the traced program's CUDA calls failed";
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << "no trace at " << path;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(path.c_str());
  ASSERT_GE(bytes.size(), sizeof(format::FileHeader));
  format::FileHeader header;
  std::memcpy(&header, bytes.data(), sizeof header);
  ASSERT_EQ(std::memcmp(header.magic, format::kMagic, sizeof header.magic), 0);
  EXPECT_EQ(header.pid, static_cast<std::uint32_t>(child));
  std::map<EventKind, int> counted;  // events of the workload's own sizes and addresses
  std::set<std::uint64_t> allocated;
  bool ended = false;
  std::size_t at = header.header_bytes;
  while (at + sizeof(format::ChunkHeader) <= bytes.size()) {
    format::ChunkHeader chunk;
    std::memcpy(&chunk, bytes.data() + at, sizeof chunk);
    ASSERT_EQ(std::memcmp(chunk.magic, format::kChunkMagic, sizeof chunk.magic), 0) << "at byte " << at;
    std::size_t r = at + sizeof chunk;
    const std::size_t end = r + chunk.payload_bytes;
    ASSERT_LE(end, bytes.size());
    while (r < end) {
      const auto type = static_cast<format::RecordType>(static_cast<std::uint8_t>(bytes[r]));
      if (type == format::RecordType::end) {
        ended = true;
        r += sizeof(format::EndRecord);
      } else if (type == format::RecordType::event) {
        format::EventRecord e;
        std::memcpy(&e, bytes.data() + r, sizeof e);
        r += sizeof e + 8 * std::size_t{e.frame_count};
        const auto kind = static_cast<EventKind>(e.kind);
        const bool ours = e.size == kTracedBytes || e.size == kTracedAsyncBytes || allocated.count(e.address);
        if (!ours || kind == EventKind::map || kind == EventKind::unmap) continue;
        EXPECT_EQ(e.backend, static_cast<std::uint8_t>(expected_trace_backend()));
        if (kind == EventKind::alloc || kind == EventKind::alloc_async) allocated.insert(e.address);
        ++counted[kind];
      } else {
        format::ModuleRecord m;
        ASSERT_EQ(type, format::RecordType::module) << "unknown record at byte " << r;
        std::memcpy(&m, bytes.data() + r, sizeof m);
        r += (sizeof m + m.path_bytes + m.build_id_bytes + 7) / 8 * 8;
      }
    }
    at = end;
  }
  EXPECT_EQ(counted[EventKind::alloc], kTracedBlocks);
  EXPECT_EQ(counted[EventKind::free], kTracedBlocks);
  EXPECT_EQ(counted[EventKind::alloc_async], 1);
  EXPECT_EQ(counted[EventKind::free_async], 1);
  EXPECT_TRUE(ended) << "the trace was not closed at exit";
}

}  // namespace
