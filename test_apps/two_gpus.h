// What the two-GPU test apps share: CUDA error checking that exits 2, a check that counts failures, and
// the skip (exit 77, ctest SKIP_RETURN_CODE) where the machine has fewer than two GPUs or no peer path.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "kernels/pattern_kernels.h"

namespace two_gpus {

inline const char* g_app = "app";
inline int g_failures = 0;

#define TWO_GPUS_CHECK(call)                                                                          \
  do {                                                                                                \
    cudaError_t status_ = (call);                                                                     \
    if (status_ != cudaSuccess) {                                                                     \
      std::printf("%s: %s failed: %s (line %d)\n", two_gpus::g_app, #call, cudaGetErrorName(status_), \
                  __LINE__);                                                                          \
      std::exit(2);                                                                                   \
    }                                                                                                 \
  } while (0)

inline void expect(bool ok, const char* what) {
  std::printf("%s: %s: %s\n", g_app, what, ok ? "ok" : "FAILED");
  if (!ok) ++g_failures;
}

// Exits 77 with a line that says why, unless GPUs 0 and 1 exist and can reach each other both ways.
inline void require_two_peer_gpus() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
    std::printf("%s: needs 2 GPUs, found %d: skipped\n", g_app, count);
    std::exit(77);
  }
  int zero_to_one = 0, one_to_zero = 0;
  TWO_GPUS_CHECK(cudaDeviceCanAccessPeer(&zero_to_one, 0, 1));
  TWO_GPUS_CHECK(cudaDeviceCanAccessPeer(&one_to_zero, 1, 0));
  if (!zero_to_one || !one_to_zero) {
    std::printf("%s: needs 2 GPUs with peer access both ways: skipped\n", g_app);
    std::exit(77);
  }
}

// Mismatches of `bytes` at `block` against the pattern of `tag`, counted by a kernel on `device`.
inline unsigned long long mismatches_seen_from(int device, const void* block, std::size_t bytes,
                                               std::uint32_t tag) {
  TWO_GPUS_CHECK(cudaSetDevice(device));
  unsigned long long* counter = nullptr;
  TWO_GPUS_CHECK(cudaMalloc(&counter, sizeof *counter));
  TWO_GPUS_CHECK(cudaMemset(counter, 0, sizeof *counter));
  TWO_GPUS_CHECK(gpushim::kernels::verify_pattern(block, bytes, tag, counter, nullptr));
  TWO_GPUS_CHECK(cudaDeviceSynchronize());
  unsigned long long seen = 0;
  TWO_GPUS_CHECK(cudaMemcpy(&seen, counter, sizeof seen, cudaMemcpyDeviceToHost));
  TWO_GPUS_CHECK(cudaFree(counter));
  if (seen != 0) std::printf("%s: %llu words differ, read from GPU %d\n", g_app, seen, device);
  return seen;
}

inline int finish() {
  std::printf("%s: %s\n", g_app, g_failures ? "FAILED" : "passed");
  return g_failures ? 1 : 0;
}

}  // namespace two_gpus
