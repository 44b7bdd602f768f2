// After a program stops freeing, gpushim gives back idle memory at its cudaDeviceSynchronize calls
// (router::after_context_synchronize), for the synchronized device only, and never at a stream's or an
// event's synchronization: the give-back unmaps, and the arena first waits for the whole context
// (providers/cuda_physical_memory.cpp), a wait those calls never make, nor a synchronization of another
// device. Checked on the GPU:
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
// 4. With two GPUs, across devices: step 1 on device 1, whose stream then waits for the main thread's
//    mutex while the main thread synchronizes device 0 four times. Device 0's synchronizations must return
//    and give nothing of device 1's back (that would wait for device 1's context); device 1's own
//    synchronizations then must, as in step 3.
// 5. Blocks the freeing thread keeps (after step 3, on device 0): step 1 again, but freed while two
//    non-blocking streams still read every block for 100 ms (kernels/pattern_kernels.h, the long
//    reader; none may see a write), so the frees are fenced (one stream alone would be solo: reused at
//    once). The fences come back to the freeing thread's returned list at the next
//    synchronization (up to 128 MiB), where the arena's release does not see them; the rest fills the
//    arena to its threshold. cudaDeviceSynchronize must then give them back as in step 3
//    (router.cpp, gather_idle_blocks).
//
//   synchronize_release_check [--size BYTES] [--blocks N] [--threshold BYTES] [--delay-ms MS] [--sync-ms MS]
//                             [--watchdog-s S] [--expect-held]
// --expect-held (under gpushim): the memory after the frees must be above what steps 3 and 4 want, or they
// prove nothing.
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

#include "check_cuda.h"
#include "device_memory_sampler.h"
#include "kernels/pattern_kernels.h"
#include "synchronize_until_released.h"

namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr std::uint32_t kTag = 0x5e00;  // block i holds the pattern of kTag + i

struct Plan {
  std::size_t size = std::size_t{128} << 20;
  int blocks = 3;
  std::size_t threshold = std::size_t{256} << 20;
  int delay_ms = 50, sync_ms = 1000, watchdog_s = 10;
  bool expect_held = false;
  double want_mib() const { return (threshold + size / 2) / kMiB; }
};

int g_failures = 0;
void fail(const char* what) {
  std::fprintf(stderr, "synchronize_release_check: FAIL: %s\n", what);
  ++g_failures;
}

std::mutex g_held_by_main;  // the lock the host functions need
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

// Step 5's readers: streams that still read every block when it is freed, and their mismatch counter.
struct Readers {
  std::vector<cudaStream_t> streams;
  unsigned long long* mismatches = nullptr;  // device memory
};

// Step 1 on the current device: MiB used with the blocks live, then freed; with `readers` (step 5)
// while each of their streams reads every block for 100 ms in all.
void free_blocks(const Plan& plan, const DeviceMemorySampler& memory, double* live_mib, double* freed_mib,
                 const Readers* readers = nullptr) {
  std::vector<void*> large(static_cast<std::size_t>(plan.blocks));
  for (std::size_t i = 0; i < large.size(); ++i) {
    CHECK_CUDA(cudaMalloc(&large[i], plan.size));
    CHECK_CUDA(gpushim::kernels::fill_pattern(large[i], plan.size, kTag + std::uint32_t(i), nullptr));
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  *live_mib = memory.used_now() / kMiB;
  if (readers) {
    const std::uint32_t each_us = 100'000 / std::uint32_t(large.size());
    for (cudaStream_t s : readers->streams)
      for (std::size_t i = 0; i < large.size(); ++i)
        CHECK_CUDA(gpushim::kernels::spin_verify_pattern(large[i], plan.size, kTag + std::uint32_t(i), each_us,
                                                         readers->mismatches, s));
  }
  for (void* p : large) CHECK_CUDA(cudaFree(p));
  *freed_mib = memory.used_now() / kMiB;
  if (memory.available() && plan.expect_held && *freed_mib <= plan.want_mib())
    fail("nothing above the threshold after the frees: the check proves nothing");
}

// Calls `synchronize` 4 times, two delays apart (the give-back is due from the second), while a host
// function queued on `waiting` waits for the calling thread.
template <typename Synchronize>
void synchronize_while_waited_for(const Plan& plan, cudaStream_t waiting, const char* step, Synchronize synchronize) {
  std::unique_lock<std::mutex> held(g_held_by_main);
  CHECK_CUDA(cudaLaunchHostFunc(waiting, take_the_mains_lock, nullptr));
  Watchdog watchdog(plan.watchdog_s, step);
  for (int round = 0; round < 4; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2 * plan.delay_ms));
    synchronize(round);
  }
}

// The MiB `memory` shows now; a failure (`what` gave memory back) where that is half a block or more
// below `freed_mib`, the memory after step 1.
double expect_nothing_given_back(const Plan& plan, const DeviceMemorySampler& memory, double freed_mib,
                                 const char* what) {
  const double used = memory.used_now() / kMiB;
  if (memory.available() && used < freed_mib - plan.size / 2 / kMiB) fail(what);
  return used;
}

// Step 3 on the current device, `device`: cudaDeviceSynchronize every 10 ms until the memory is at most
// what the plan wants, or --sync-ms passed; then the device's line. `kept` is what the synchronizations of
// step 2 or 4 (`kept_after`) left.
void release_and_report(const Plan& plan, const DeviceMemorySampler& memory, int device, double live, double freed,
                        double kept, const char* kept_after) {
  const auto [used, waited_ms] = synchronize_until_released(memory, plan.want_mib(), plan.sync_ms);
  std::printf("synchronize_release_check: device %d, %d x %.0f MiB; used (MiB): %.0f live, %.0f freed, %.0f after "
              "%s, %.0f after %.0f ms of its own synchronizations (want <= %.0f)%s\n",
              device, plan.blocks, plan.size / kMiB, live, freed, kept, kept_after, used, waited_ms, plan.want_mib(),
              memory.available() ? "" : " [NVML unavailable: memory not checked]");
  if (memory.available() && used > plan.want_mib()) fail("idle memory stayed through the device's synchronizations");
}

// Step 5 on device 0 (`memory`), after step 3.
void kept_by_the_freeing_thread(const Plan& plan, const DeviceMemorySampler& memory) {
  Readers readers;
  readers.streams.resize(2);
  for (cudaStream_t& s : readers.streams) CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK_CUDA(cudaMalloc(&readers.mismatches, sizeof *readers.mismatches));
  CHECK_CUDA(cudaMemset(readers.mismatches, 0, sizeof *readers.mismatches));
  double live = 0, freed = 0;
  free_blocks(plan, memory, &live, &freed, &readers);
  for (cudaStream_t s : readers.streams) CHECK_CUDA(cudaStreamSynchronize(s));
  const double kept =
      expect_nothing_given_back(plan, memory, freed, "a stream synchronization gave memory back");
  unsigned long long mismatches = 0;
  CHECK_CUDA(cudaMemcpy(&mismatches, readers.mismatches, sizeof mismatches, cudaMemcpyDeviceToHost));
  if (mismatches != 0) fail("a block freed while a stream still read it was written meanwhile");
  release_and_report(plan, memory, 0, live, freed, kept, "the busy streams' synchronizations");
  CHECK_CUDA(cudaFree(readers.mismatches));
  for (cudaStream_t s : readers.streams) CHECK_CUDA(cudaStreamDestroy(s));
}

// Steps 1-3 and 5 on device 0.
void on_one_device(const Plan& plan) {
  DeviceMemorySampler memory(0);
  cudaStream_t s1 = nullptr, s2 = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CHECK_CUDA(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  cudaEvent_t on_s1 = nullptr;
  CHECK_CUDA(cudaEventCreateWithFlags(&on_s1, cudaEventDisableTiming));
  void* work = nullptr;  // what S1 carries between its synchronizations
  CHECK_CUDA(cudaMalloc(&work, 4096));

  double live = 0, freed = 0;
  free_blocks(plan, memory, &live, &freed);
  synchronize_while_waited_for(plan, s2, "a stream or event synchronization while another stream waits for the caller",
                               [&](int round) {
                                 CHECK_CUDA(cudaMemsetAsync(work, round, 4096, s1));
                                 CHECK_CUDA(cudaEventRecord(on_s1, s1));
                                 CHECK_CUDA(cudaStreamSynchronize(s1));
                                 CHECK_CUDA(cudaEventSynchronize(on_s1));
                               });
  const double kept =
      expect_nothing_given_back(plan, memory, freed, "a stream or event synchronization gave memory back");
  release_and_report(plan, memory, 0, live, freed, kept, "the stream and event synchronizations");
  kept_by_the_freeing_thread(plan, memory);
  CHECK_CUDA(cudaFree(work));
  CHECK_CUDA(cudaEventDestroy(on_s1));
  CHECK_CUDA(cudaStreamDestroy(s2));
  CHECK_CUDA(cudaStreamDestroy(s1));
}

// Step 4: device 1's memory, device 0's synchronizations, then device 1's.
void across_two_devices(const Plan& plan) {
  CHECK_CUDA(cudaSetDevice(1));
  CHECK_CUDA(cudaFree(nullptr));  // device 1's context, before NVML's baseline
  DeviceMemorySampler memory(1);
  cudaStream_t waiting = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&waiting, cudaStreamNonBlocking));
  double live = 0, freed = 0;
  free_blocks(plan, memory, &live, &freed);
  CHECK_CUDA(cudaSetDevice(0));
  synchronize_while_waited_for(plan, waiting, "device 0's cudaDeviceSynchronize while device 1's stream waits for the "
                               "caller", [](int) { CHECK_CUDA(cudaDeviceSynchronize()); });
  const double kept =
      expect_nothing_given_back(plan, memory, freed, "device 0's synchronization gave device 1's memory back");
  CHECK_CUDA(cudaSetDevice(1));
  release_and_report(plan, memory, 1, live, freed, kept, "device 0's synchronizations");
  CHECK_CUDA(cudaStreamDestroy(waiting));
  CHECK_CUDA(cudaSetDevice(0));
}

}  // namespace

int main(int argc, char** argv) {
  Plan plan;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--size" && i + 1 < argc) plan.size = std::strtoull(argv[++i], nullptr, 0);
    else if (arg == "--blocks" && i + 1 < argc) plan.blocks = std::atoi(argv[++i]);
    else if (arg == "--threshold" && i + 1 < argc) plan.threshold = std::strtoull(argv[++i], nullptr, 0);
    else if (arg == "--delay-ms" && i + 1 < argc) plan.delay_ms = std::atoi(argv[++i]);
    else if (arg == "--sync-ms" && i + 1 < argc) plan.sync_ms = std::atoi(argv[++i]);
    else if (arg == "--watchdog-s" && i + 1 < argc) plan.watchdog_s = std::atoi(argv[++i]);
    else if (arg == "--expect-held") plan.expect_held = true;
    else {
      std::fprintf(stderr,
                   "usage: synchronize_release_check [--size BYTES] [--blocks N] [--threshold BYTES] [--delay-ms MS]"
                   " [--sync-ms MS] [--watchdog-s S] [--expect-held]\n");
      return 2;
    }
  }
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaFree(nullptr));  // the context, before NVML's baseline
  on_one_device(plan);
  int devices = 0;
  CHECK_CUDA(cudaGetDeviceCount(&devices));
  if (devices >= 2) across_two_devices(plan);
  else std::printf("synchronize_release_check: one GPU: the check across devices did not run\n");
  return g_failures == 0 ? 0 : 1;
}
