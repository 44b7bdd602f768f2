// After a program stops freeing, gpushim gives back idle memory at its cudaDeviceSynchronize calls
// (router::after_context_synchronize), and never at a stream's or an event's synchronization: the give-back
// unmaps, and the arena first waits for the whole context (providers/cuda_physical_memory.cpp), a wait
// those calls never make. Checked on the GPU:
//
// 1. --blocks blocks of --size (3 x 128 MiB) are allocated and freed with cudaMalloc/cudaFree. Under
//    gpushim (ctest sets GPUSHIM_VMM_RELEASE_THRESHOLD=256MiB and GPUSHIM_VMM_RELEASE_DELAY=50ms) idle
//    memory above twice the threshold would go back at once (4 x 256 MiB left 268 MiB at the free on the
//    H200); 384 MiB is below that, so what is above the threshold goes back only once it stayed idle for
//    the delay. The program then frees nothing more, so only a synchronization can give it back.
// 2. The deadlock a give-back at a stream synchronization would cause: the main thread holds a mutex that
//    a host function queued on stream S2 needs, and synchronizes stream S1 and an event on S1, each after
//    the delay has passed, 4 times. None of those calls waits for S2, so each must return (a watchdog ends
//    the program with exit code 1 after --watchdog-s seconds) and none may give memory back. Then the
//    mutex is let go.
// 3. cudaDeviceSynchronize every 10 ms for up to --sync-ms: the device's used memory (NVML) must fall to
//    the threshold plus half a block. Without gpushim cudaFree gave the memory back at once.
//
//   synchronize_release_check [--size BYTES] [--blocks N] [--threshold BYTES] [--delay-ms MS] [--sync-ms MS]
//                             [--watchdog-s S] [--expect-held]
// --expect-held (under gpushim): the memory after the frees must be above what step 3 wants, or step 3
// proves nothing.
// Exits 0 when every synchronization returned and (where NVML is found) the memory fell as it should;
// 1 otherwise, 2 on a failed CUDA call.
#include <cuda_runtime.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "device_memory_sampler.h"

namespace {

#define CHECK_CUDA(call)                                                                             \
  do {                                                                                               \
    const cudaError_t status_ = (call);                                                              \
    if (status_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "synchronize_release_check: %s:%d: %s: %s\n", __FILE__, __LINE__, #call,  \
                   cudaGetErrorString(status_));                                                     \
      std::exit(2);                                                                                  \
    }                                                                                                \
  } while (0)

constexpr double kMiB = 1024.0 * 1024.0;

std::mutex g_held_by_main;  // the lock the host function on S2 needs

void CUDART_CB take_the_mains_lock(void*) { std::lock_guard<std::mutex> wait_for_main(g_held_by_main); }

// Ends the process if the step it watches does not finish in time: a deadlocked program never returns.
class Watchdog {
 public:
  Watchdog(int seconds, const char* step) : step_(step) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!done_cv_.wait_for(lock, std::chrono::seconds(seconds), [this] { return done_; })) {
        std::fprintf(stderr, "synchronize_release_check: FAIL: %s did not return in %d s (deadlock)\n", step_,
                     seconds);
        std::fflush(stderr);
        _exit(1);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    done_cv_.notify_one();
    thread_.join();
  }

 private:
  const char* step_;
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  std::size_t size = std::size_t{128} << 20, threshold = std::size_t{256} << 20;
  int blocks = 3, delay_ms = 50, sync_ms = 1000, watchdog_s = 10;
  bool expect_held = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--size" && i + 1 < argc) size = std::strtoull(argv[++i], nullptr, 0);
    else if (arg == "--blocks" && i + 1 < argc) blocks = std::atoi(argv[++i]);
    else if (arg == "--threshold" && i + 1 < argc) threshold = std::strtoull(argv[++i], nullptr, 0);
    else if (arg == "--delay-ms" && i + 1 < argc) delay_ms = std::atoi(argv[++i]);
    else if (arg == "--sync-ms" && i + 1 < argc) sync_ms = std::atoi(argv[++i]);
    else if (arg == "--watchdog-s" && i + 1 < argc) watchdog_s = std::atoi(argv[++i]);
    else if (arg == "--expect-held") expect_held = true;
    else {
      std::fprintf(stderr,
                   "usage: synchronize_release_check [--size BYTES] [--blocks N] [--threshold BYTES] [--delay-ms MS]"
                   " [--sync-ms MS] [--watchdog-s S] [--expect-held]\n");
      return 2;
    }
  }
  CHECK_CUDA(cudaFree(nullptr));  // the context, before NVML's baseline
  DeviceMemorySampler memory(0);
  cudaStream_t s1 = nullptr, s2 = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CHECK_CUDA(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  cudaEvent_t on_s1 = nullptr;
  CHECK_CUDA(cudaEventCreateWithFlags(&on_s1, cudaEventDisableTiming));

  void* work = nullptr;  // what S1 carries between its synchronizations
  CHECK_CUDA(cudaMalloc(&work, 4096));

  // 1. Memory freed, then no frees.
  std::vector<void*> large(static_cast<std::size_t>(blocks));
  for (void*& p : large) {
    CHECK_CUDA(cudaMalloc(&p, size));
    CHECK_CUDA(cudaMemset(p, 1, size));
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  const double used_live = memory.used_now() / kMiB;
  for (void* p : large) CHECK_CUDA(cudaFree(p));
  const double used_freed = memory.used_now() / kMiB;

  // 2. Stream and event synchronizations while S2 waits for the main thread.
  int failures = 0;
  {
    std::unique_lock<std::mutex> held(g_held_by_main);
    CHECK_CUDA(cudaLaunchHostFunc(s2, take_the_mains_lock, nullptr));
    Watchdog watchdog(watchdog_s, "a stream or event synchronization while another stream waits for the caller");
    for (int round = 0; round < 4; ++round) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2 * delay_ms));
      CHECK_CUDA(cudaMemsetAsync(work, round, 4096, s1));
      CHECK_CUDA(cudaEventRecord(on_s1, s1));
      CHECK_CUDA(cudaStreamSynchronize(s1));
      CHECK_CUDA(cudaEventSynchronize(on_s1));
    }
  }
  const double used_after_stream_syncs = memory.used_now() / kMiB;
  if (memory.available() && used_after_stream_syncs < used_freed - size / 2 / kMiB) {
    std::fprintf(stderr, "synchronize_release_check: FAIL: a stream or event synchronization gave memory back\n");
    ++failures;
  }

  // 3. Device synchronizations give back what stayed idle past the delay.
  const double want_mib = (threshold + size / 2) / kMiB;
  double used = memory.used_now() / kMiB;
  const auto syncs_began = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - syncs_began < std::chrono::milliseconds(sync_ms)) {
    CHECK_CUDA(cudaDeviceSynchronize());
    used = memory.used_now() / kMiB;
    if (used <= want_mib) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double waited_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - syncs_began).count();
  std::printf("synchronize_release_check: %d x %.0f MiB; used (MiB): %.0f live, %.0f freed, %.0f after the stream "
              "and event synchronizations, %.0f after %.0f ms of device synchronizations (want <= %.0f)%s\n",
              blocks, size / kMiB, used_live, used_freed, used_after_stream_syncs, used, waited_ms, want_mib,
              memory.available() ? "" : " [NVML unavailable: memory not checked]");
  if (memory.available() && expect_held && used_freed <= want_mib) {
    std::fprintf(stderr, "synchronize_release_check: FAIL: nothing above the threshold after the frees: the check "
                         "proves nothing\n");
    ++failures;
  }
  if (memory.available() && used > want_mib) {
    std::fprintf(stderr,
                 "synchronize_release_check: FAIL: idle memory stayed through %.0f ms of cudaDeviceSynchronize\n",
                 waited_ms);
    ++failures;
  }
  CHECK_CUDA(cudaFree(work));
  CHECK_CUDA(cudaEventDestroy(on_s1));
  CHECK_CUDA(cudaStreamDestroy(s2));
  CHECK_CUDA(cudaStreamDestroy(s1));
  return failures == 0 ? 0 : 1;
}
