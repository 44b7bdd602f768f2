// What the two-GPU test apps share: CUDA error checking that exits 2, a check that counts failures, the
// pair of GPUs they run on (`--pair A,B`, default 0,1, so scripts/peer_check.sh can cover every ordered
// pair of a larger machine), and the skip (exit 77, ctest SKIP_RETURN_CODE) where the machine lacks the
// pair's GPUs or a peer path between them.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/pattern_kernels.h"

namespace two_gpus {

inline const char* g_app = "app";
inline int g_failures = 0;
inline int g_a = 0;  // the first GPU of the pair ("GPU 0" of the apps' comments)
inline int g_b = 1;  // the second GPU of the pair ("GPU 1")

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

// Reads `--pair A,B` (two different ordinals) into g_a and g_b; exits 2 on a malformed pair. Then exits 77
// with a line that says why, unless GPUs A and B exist and can reach each other both ways.
inline void require_two_peer_gpus(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--pair") != 0) continue;
    int a = -1, b = -1;
    if (i + 1 >= argc || std::sscanf(argv[i + 1], "%d,%d", &a, &b) != 2 || a < 0 || b < 0 || a == b) {
      std::printf("%s: --pair takes two different GPU ordinals, e.g. --pair 2,3\n", g_app);
      std::exit(2);
    }
    g_a = a;
    g_b = b;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
    std::printf("%s: needs 2 GPUs, found %d: skipped\n", g_app, count);
    std::exit(77);
  }
  if (g_a >= count || g_b >= count) {
    std::printf("%s: pair %d,%d needs GPU %d, found %d GPUs: skipped\n", g_app, g_a, g_b,
                g_a > g_b ? g_a : g_b, count);
    std::exit(77);
  }
  int a_to_b = 0, b_to_a = 0;
  TWO_GPUS_CHECK(cudaDeviceCanAccessPeer(&a_to_b, g_a, g_b));
  TWO_GPUS_CHECK(cudaDeviceCanAccessPeer(&b_to_a, g_b, g_a));
  if (!a_to_b || !b_to_a) {
    std::printf("%s: needs GPUs %d and %d with peer access both ways: skipped\n", g_app, g_a, g_b);
    std::exit(77);
  }
  std::printf("%s: GPUs %d and %d\n", g_app, g_a, g_b);
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
