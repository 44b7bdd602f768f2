// The loop of the checks that idle memory goes back at the program's synchronizations
// (synchronize_release_check, idle_threads_release_check): cudaDeviceSynchronize on the current device
// every 10 ms until its used memory (NVML, above the sampler's baseline) is at most `want_mib`, or
// `limit_ms` passed. Without NVML used memory reads 0: one synchronization, and the caller says it was
// not checked.
#pragma once

#include <chrono>
#include <thread>

#include "check_cuda.h"
#include "device_memory_sampler.h"

struct SynchronizedRelease {
  double used_mib;   // the device's used memory when the loop ended
  double waited_ms;  // how long it synchronized
};

inline SynchronizedRelease synchronize_until_released(const DeviceMemorySampler& memory, double want_mib,
                                                      int limit_ms) {
  constexpr double kMiB = 1024.0 * 1024.0;
  double used = memory.used_now() / kMiB;
  const auto began = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - began < std::chrono::milliseconds(limit_ms)) {
    CHECK_CUDA(cudaDeviceSynchronize());
    used = memory.used_now() / kMiB;
    if (used <= want_mib) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return {used, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began).count()};
}
