// The whole of libgpushim.so — interposer, router, free fences, a real backend — in a real process, over
// the fake driver (tests/fake_driver/fake_libcuda.cpp: contexts, VMM over host memory, events, streams,
// pools). tests/router_e2e.cmake runs this program once per backend (GPUSHIM_BACKEND) with
// LD_PRELOAD=libgpushim.so, and once more per backend under GPUSHIM_LIMIT.
//
// Besides results, the tests read the fake's call counters: that is how "a pair in steady state makes no
// driver call but cuCtxGetCurrent" and "at most one fence per 64 frees" are checked without a GPU.
#include <cuda.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern "C" {
int fake_cuda_calls(const char* symbol);
long fake_cuda_total_calls();
void fake_cuda_hold_gpu(int held);
std::size_t fake_cuda_physical_bytes(int device);
int fake_cuda_device_of(CUdeviceptr p);
}

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;
constexpr std::size_t kFenceBatch = 64;  // router/free_fence_queue.h: a fence per at most 64 cuMemFree

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

// While the program's work is totally ordered (no stream, or one blocking stream), cuMemFree'd blocks are
// reused at once (legacy-ordered reuse, router.cpp); a non-blocking stream ends that for the process.
// Tests of the fences call this first.
void leave_legacy_order() {
  CUstream s = nullptr;
  ASSERT_EQ(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(cuStreamDestroy(s), CUDA_SUCCESS);
}

// cudaMalloc's blocks meet the texture alignment (512 B on the H100 and H200): so must gpushim's.
bool aligned(CUdeviceptr p) { return p % 512 == 0; }

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
  for (int i = 0; i < 1000; ++i) {
    CUdeviceptr p = 0;
    ASSERT_EQ(cuMemAlloc(&p, 4 * KiB), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  }
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
    EXPECT_LE(records, kPairs / static_cast<int>(kFenceBatch) + 1);
    EXPECT_LE(queries, kPairs / static_cast<int>(kFenceBatch) + 1);
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
  for (int i = 0; i < 1000; ++i) {
    CUdeviceptr p = 0;
    ASSERT_EQ(cuMemAlloc(&p, 4 * KiB), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(p), CUDA_SUCCESS);
  }
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
  EXPECT_EQ(cuStreamDestroy(s1), CUDA_SUCCESS);
  EXPECT_EQ(cuStreamDestroy(s2), CUDA_SUCCESS);
  for (int i = 0; i < 200; ++i) {
    CUdeviceptr t = 0;
    ASSERT_EQ(cuMemAlloc(&t, 512), CUDA_SUCCESS);
    ASSERT_EQ(cuMemFree(t), CUDA_SUCCESS);
  }
  (void)before;
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
      std::vector<std::pair<CUdeviceptr, std::size_t>> live;
      for (int i = 0; i < 3000; ++i) {
        if (live.size() < 32 && (live.empty() || random() % 2)) {
          const std::size_t bytes = std::size_t{1} << (8 + random() % 13);  // 256 B .. 1 MiB
          CUdeviceptr p = 0;
          if (cuMemAlloc(&p, bytes) != CUDA_SUCCESS) {
            ++failures[t];
            continue;
          }
          fill(p, bytes, static_cast<unsigned char>(t * 31 + i));
          live.push_back({p, bytes});
          continue;
        }
        const std::size_t k = random() % live.size();
        const auto [p, bytes] = live[k];
        const auto expected = reinterpret_cast<unsigned char*>(p)[0];
        if (!holds(p, bytes, expected) || cuMemFree(p) != CUDA_SUCCESS) ++failures[t];
        live[k] = live.back();
        live.pop_back();
      }
      for (const auto& [p, bytes] : live)
        if (cuMemFree(p) != CUDA_SUCCESS) ++failures[t];
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

// With FAKE_CUDA_DEVICES=2 (tests/router_e2e.cmake): memory comes from the current context's device,
// a stream's allocations from the stream's device, and any block can be freed from any context.
TEST_F(RouterEndToEnd, TwoDevicesEachServeTheirOwnContext) {
  int count = 0;
  ASSERT_EQ(cuDeviceGetCount(&count), CUDA_SUCCESS);
  if (count < 2) GTEST_SKIP() << "one fake device in this run";
  CUdevice dev0 = 0, dev1 = 0;
  CUcontext ctx0 = nullptr, ctx1 = nullptr;
  ASSERT_EQ(cuDeviceGet(&dev0, 0), CUDA_SUCCESS);
  ASSERT_EQ(cuDeviceGet(&dev1, 1), CUDA_SUCCESS);
  ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx0, dev0), CUDA_SUCCESS);
  ASSERT_EQ(cuDevicePrimaryCtxRetain(&ctx1, dev1), CUDA_SUCCESS);
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
  if (devices > 1) EXPECT_GT(live.size() * kBlock, limit) << "the cap is per device, not the total";
  if (carves_memory()) {
    for (std::size_t d = 0; d < devices; ++d)
      EXPECT_LE(fake_cuda_physical_bytes(static_cast<int>(d)), limit) << "device " << d << " over its cap";
  }
  std::size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cuMemGetInfo(&free_bytes, &total), CUDA_SUCCESS);
  EXPECT_EQ(total, limit);
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

}  // namespace
