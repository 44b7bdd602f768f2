// Threads that stopped allocating, alive and idle, keep nothing for good: the free blocks gpushim keeps
// for them in front of its arena (the thread caches' size classes, up to 4 MiB a thread; with streams, the
// fenced frees that come back to each thread's returned list) go back at the program's
// cudaDeviceSynchronize calls once the arena's release is due counting them (router.cpp,
// gather_idle_blocks). Checked on the GPU with GPUSHIM_VMM_RELEASE_THRESHOLD=0 ("keep nothing idle"):
//
// 1. --threads threads each allocate --blocks blocks, alternately 1 MiB and 960 KiB (two size classes
//    of the thread caches, which keep 2 MiB of each: 3.9 MiB a thread), fill them, and free them all.
//    With --streams each thread first creates a non-blocking stream and fills its blocks there, so the
//    frees are fenced (the process has several streams) and come back through the returned lists.
// 2. The threads stay alive and idle. The main thread calls cudaDeviceSynchronize every 10 ms for up to
//    --sync-ms; the device's used memory (NVML, above what it was before the threads) must fall to
//    --want-mib. Without gpushim cudaFree gave the memory back at once.
//
//   idle_threads_release_check [--threads N] [--blocks N] [--streams] [--sync-ms MS] [--want-mib MIB]
//                              [--expect-held]
// --expect-held (under gpushim): the memory when the threads stopped must be above --want-mib by at least
// half of what their classes keep, or the check proves nothing.
// Exits 0 when the memory fell as it should (or NVML is not found: then it says so), 1 otherwise, 2 on a
// failed CUDA call.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "check_cuda.h"
#include "device_memory_sampler.h"
#include "kernels/pattern_kernels.h"
#include "synchronize_until_released.h"

namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr std::size_t kSizes[2] = {std::size_t{1} << 20, std::size_t{960} << 10};

struct Plan {
  int threads = 16;
  int blocks = 8;
  bool streams = false;
  int sync_ms = 1000;
  double want_mib = 16;
  bool expect_held = false;
  // What the thread caches keep of each thread's blocks: two of each size (2 MiB of a class).
  double kept_by_classes_mib() const { return threads * 2 * double(kSizes[0] + kSizes[1]) / kMiB; }
};

// Step 1 on one thread; then it waits, alive, until `idle_over`.
void allocate_fill_free(const Plan& plan, int index, std::atomic<int>& stopped, const std::atomic<bool>& idle_over) {
  CHECK_CUDA(cudaSetDevice(0));
  cudaStream_t stream = nullptr;
  if (plan.streams) CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<void*> blocks(static_cast<std::size_t>(plan.blocks));
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    CHECK_CUDA(cudaMalloc(&blocks[i], kSizes[i % 2]));
    CHECK_CUDA(gpushim::kernels::fill_pattern(blocks[i], kSizes[i % 2], std::uint32_t(index), stream));
  }
  if (!plan.streams) CHECK_CUDA(cudaDeviceSynchronize());
  for (std::size_t i = 0; i < blocks.size(); ++i) CHECK_CUDA(cudaFree(blocks[i]));
  stopped.fetch_add(1, std::memory_order_release);
  while (!idle_over.load(std::memory_order_acquire)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (stream) CHECK_CUDA(cudaStreamDestroy(stream));
}

}  // namespace

int main(int argc, char** argv) {
  Plan plan;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) plan.threads = std::atoi(argv[++i]);
    else if (arg == "--blocks" && i + 1 < argc) plan.blocks = std::atoi(argv[++i]);
    else if (arg == "--streams") plan.streams = true;
    else if (arg == "--sync-ms" && i + 1 < argc) plan.sync_ms = std::atoi(argv[++i]);
    else if (arg == "--want-mib" && i + 1 < argc) plan.want_mib = std::atof(argv[++i]);
    else if (arg == "--expect-held") plan.expect_held = true;
    else {
      std::fprintf(stderr, "usage: idle_threads_release_check [--threads N] [--blocks N] [--streams] [--sync-ms MS]"
                           " [--want-mib MIB] [--expect-held]\n");
      return 2;
    }
  }
  if (plan.threads < 1 || plan.blocks < 4) {
    std::fprintf(stderr, "idle_threads_release_check: --threads must be at least 1 and --blocks at least 4\n");
    return 2;
  }
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaFree(nullptr));  // the context, before NVML's baseline
  DeviceMemorySampler memory(0);

  std::atomic<int> stopped{0};
  std::atomic<bool> idle_over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < plan.threads; ++t)
    threads.emplace_back(allocate_fill_free, std::cref(plan), t, std::ref(stopped), std::cref(idle_over));
  while (stopped.load(std::memory_order_acquire) < plan.threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const double stopped_mib = memory.used_now() / kMiB;

  int failures = 0;
  if (memory.available() && plan.expect_held && stopped_mib < plan.want_mib + plan.kept_by_classes_mib() / 2) {
    std::fprintf(stderr, "idle_threads_release_check: FAIL: %.0f MiB held when the threads stopped, not above "
                         "%.0f MiB: the check proves nothing\n", stopped_mib, plan.want_mib + plan.kept_by_classes_mib() / 2);
    ++failures;
  }
  const auto [used, waited_ms] = synchronize_until_released(memory, plan.want_mib, plan.sync_ms);
  idle_over.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();

  std::printf("idle_threads_release_check: %d threads%s, %d blocks each; used (MiB): %.0f when they stopped, %.0f "
              "after %.0f ms of cudaDeviceSynchronize (want <= %.0f)%s\n",
              plan.threads, plan.streams ? " with a stream each" : "", plan.blocks, stopped_mib, used, waited_ms,
              plan.want_mib, memory.available() ? "" : " [NVML unavailable: memory not checked]");
  if (memory.available() && used > plan.want_mib) {
    std::fprintf(stderr, "idle_threads_release_check: FAIL: idle threads' free blocks stayed through the "
                         "synchronizations\n");
    ++failures;
  }
  return failures == 0 ? 0 : 1;
}
