// The race solo must not lose (router/stream_activity.h, docs/free-safety.md "Solo"): one non-blocking
// stream R carries all the work. A long reader on R still verifies block A when the host frees A; the
// same size is allocated at once (solo hands A's memory out again) and overwritten by one of: R itself,
// a legacy-stream kernel, a synchronous cudaMemset, a synchronous pageable cudaMemcpy, another
// non-blocking stream, a blocking stream. Every overwriter but R must be queued behind the reader, so the
// reader counts no mismatch. Between rounds the device is synchronized and small blocks are churned, so
// the streams are found idle and R's next launch starts solo again.
//
//   solo_race [--rounds N] [--size BYTES] [--spin-us US] [--expect-reuse]
// Exits 0 when no reader saw a mismatch (and, with --expect-reuse, every kind of overwriter got the freed
// address at least once: solo happened), 1 otherwise, 2 on a failed CUDA call.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/pattern_kernels.h"

namespace {

#define CHECK_CUDA(call)                                                                             \
  do {                                                                                               \
    const cudaError_t status_ = (call);                                                              \
    if (status_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "solo_race: %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(status_)); \
      std::exit(2);                                                                                  \
    }                                                                                                \
  } while (0)

enum Overwriter { kSameStream, kLegacyKernel, kSyncMemset, kSyncCopy, kOtherStream, kBlockingStream, kKinds };
const char* const kNames[kKinds] = {"the same stream", "a legacy kernel", "a synchronous memset",
                                    "a synchronous copy", "another non-blocking stream", "a blocking stream"};

// Frees and allocates small blocks after a synchronize, so the router polls and finds every stream idle.
void let_streams_go_idle() {
  CHECK_CUDA(cudaDeviceSynchronize());
  for (int i = 0; i < 600; ++i) {
    void* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, 4096));
    CHECK_CUDA(cudaFree(p));
  }
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 36;
  std::size_t size = 64u << 20;
  unsigned spin_us = 3000;
  bool expect_reuse = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
    else if (arg == "--size" && i + 1 < argc) size = std::strtoull(argv[++i], nullptr, 0);
    else if (arg == "--spin-us" && i + 1 < argc) spin_us = static_cast<unsigned>(std::atoi(argv[++i]));
    else if (arg == "--expect-reuse") expect_reuse = true;
    else {
      std::fprintf(stderr, "usage: solo_race [--rounds N] [--size BYTES] [--spin-us US] [--expect-reuse]\n");
      return 2;
    }
  }
  cudaStream_t lone = nullptr, other = nullptr, blocking = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&lone, cudaStreamNonBlocking));
  CHECK_CUDA(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  CHECK_CUDA(cudaStreamCreateWithFlags(&blocking, cudaStreamDefault));
  unsigned long long* counter = nullptr;
  CHECK_CUDA(cudaMalloc(&counter, sizeof *counter));
  CHECK_CUDA(cudaMemset(counter, 0, sizeof *counter));
  std::vector<unsigned char> host(size, 0xcd);

  unsigned long long mismatches = 0;
  int reused[kKinds] = {}, ran[kKinds] = {};
  for (int round = 0; round < rounds; ++round) {
    const Overwriter kind = static_cast<Overwriter>(round % kKinds);
    let_streams_go_idle();
    const std::uint32_t tag_a = 0x5000 + 2 * round, tag_b = tag_a + 1;
    void* a = nullptr;
    CHECK_CUDA(cudaMalloc(&a, size));
    CHECK_CUDA(gpushim::kernels::fill_pattern(a, size, tag_a, lone));
    CHECK_CUDA(gpushim::kernels::spin_verify_pattern(a, size, tag_a, spin_us, counter, lone));
    CHECK_CUDA(cudaFree(a));
    void* b = nullptr;
    CHECK_CUDA(cudaMalloc(&b, size));
    switch (kind) {
      case kSameStream: CHECK_CUDA(gpushim::kernels::fill_pattern(b, size, tag_b, lone)); break;
      case kLegacyKernel: CHECK_CUDA(gpushim::kernels::fill_pattern(b, size, tag_b, nullptr)); break;
      case kSyncMemset: CHECK_CUDA(cudaMemset(b, 0xab, size)); break;
      case kSyncCopy: CHECK_CUDA(cudaMemcpy(b, host.data(), size, cudaMemcpyHostToDevice)); break;
      case kOtherStream: CHECK_CUDA(gpushim::kernels::fill_pattern(b, size, tag_b, other)); break;
      case kBlockingStream: CHECK_CUDA(gpushim::kernels::fill_pattern(b, size, tag_b, blocking)); break;
      default: break;
    }
    CHECK_CUDA(cudaDeviceSynchronize());
    unsigned long long seen = 0;
    CHECK_CUDA(cudaMemcpy(&seen, counter, sizeof seen, cudaMemcpyDeviceToHost));
    if (seen != mismatches) {
      std::fprintf(stderr, "solo_race: round %d (%s): the reader saw %llu words overwritten\n", round, kNames[kind],
                   seen - mismatches);
      mismatches = seen;
    }
    ++ran[kind];
    if (a == b) ++reused[kind];
    CHECK_CUDA(cudaFree(b));
  }
  bool every_kind_reused = true;
  for (int k = 0; k < kKinds; ++k) {
    std::printf("solo_race: %-28s %d of %d rounds reused the freed address\n", kNames[k], reused[k], ran[k]);
    every_kind_reused = every_kind_reused && reused[k] > 0;
  }
  std::printf("solo_race: %d rounds of %zu bytes, reader %u us: %llu mismatched words\n", rounds, size, spin_us,
              mismatches);
  if (mismatches) return 1;
  if (expect_reuse && !every_kind_reused) {
    std::printf("solo_race: FAIL: some overwriter never got the freed address (no solo?)\n");
    return 1;
  }
  std::printf("solo_race: PASS\n");
  return 0;
}
