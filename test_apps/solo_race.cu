// The race solo must not lose (router/stream_activity.h, docs/free-safety.md "Solo"): one non-blocking
// stream R carries all the work. A long reader on R still verifies block A when the host frees A; the
// same size is allocated at once (solo hands A's memory out again) and overwritten by one of: R itself,
// a legacy-stream kernel, a synchronous cudaMemset, a synchronous pageable cudaMemcpy, another
// non-blocking stream, a blocking stream, a legacy kernel after another stream worked beside R once
// and went quiet while R stayed busy (solo regained at a poll), and a batch copy on another stream
// through the driver's CUDA 12.8 prototype of cuMemcpyBatchAsync (what a runtime of 12.8-12.9 calls).
// Every overwriter but R must be queued behind the reader, so the reader counts no mismatch. Between
// rounds the device is synchronized and small blocks are churned, so the streams are found idle and R's
// next launch starts solo again.
//
//   solo_race [--rounds N] [--size BYTES] [--spin-us US] [--expect-reuse]
// Exits 0 when no reader saw a mismatch (and, with --expect-reuse, every kind of overwriter got the freed
// address at least once: solo happened), 1 otherwise, 2 on a failed CUDA call.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "check_cuda.h"
#include "kernels/pattern_kernels.h"

namespace {

enum Overwriter {
  kSameStream, kLegacyKernel, kSyncMemset, kSyncCopy, kOtherStream, kBlockingStream, kLegacyAfterCompany,
  kOlderBatchCopy, kKinds
};
const char* const kNames[kKinds] = {"the same stream", "a legacy kernel", "a synchronous memset",
                                    "a synchronous copy", "another non-blocking stream", "a blocking stream",
                                    "a legacy kernel, solo regained", "a 12.8 batch copy, other stream"};

// Frees and allocates small blocks after a synchronize, so the router polls and finds every stream idle.
void let_streams_go_idle() {
  CHECK_CUDA(cudaDeviceSynchronize());
  for (int i = 0; i < 600; ++i) {
    void* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, 4096));
    CHECK_CUDA(cudaFree(p));
  }
}

// Frees and allocates small blocks for `ms` without synchronizing: the router's polls run meanwhile.
void churn_for(int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    void* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, 4096));
    CHECK_CUDA(cudaFree(p));
  }
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 48;
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
  // The block the lone stream keeps reading in the rounds that regain solo, and the other stream's.
  constexpr std::size_t kKeeperBytes = 1 << 20;
  constexpr std::uint32_t kKeeperTag = 0x4000;
  void* keeper = nullptr;
  void* company = nullptr;
  CHECK_CUDA(cudaMalloc(&keeper, kKeeperBytes));
  CHECK_CUDA(cudaMalloc(&company, kKeeperBytes));
  // The batch copy's source, and the driver's CUDA 12.8 prototype of it, asked as a runtime of 12.8 asks.
  void* copy_source = nullptr;
  CHECK_CUDA(cudaMalloc(&copy_source, size));
  CHECK_CUDA(cudaMemset(copy_source, 0xab, size));
  void* entry = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  CHECK_CUDA(cudaGetDriverEntryPointByVersion("cuMemcpyBatchAsync", &entry, 12080, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || !entry) {
    std::fprintf(stderr, "solo_race: the driver has no cuMemcpyBatchAsync at CUDA 12.8\n");
    return 2;
  }
  const auto batch_copy_12080 = reinterpret_cast<PFN_cuMemcpyBatchAsync_v12080>(entry);

  unsigned long long mismatches = 0;
  int reused[kKinds] = {}, ran[kKinds] = {};
  for (int round = 0; round < rounds; ++round) {
    const Overwriter kind = static_cast<Overwriter>(round % kKinds);
    let_streams_go_idle();
    const std::uint32_t tag_a = 0x5000 + 2 * round, tag_b = tag_a + 1;
    if (kind == kLegacyAfterCompany) {
      // Another stream works once beside the lone one (as cuDNN's does at its handle's creation), which
      // ends solo; the lone stream stays busy throughout (two long reads of a kept block), and solo must
      // begin again at a poll once the other stream has been quiet (router/stream_activity.cpp).
      CHECK_CUDA(gpushim::kernels::fill_pattern(keeper, kKeeperBytes, kKeeperTag, lone));
      CHECK_CUDA(gpushim::kernels::spin_verify_pattern(keeper, kKeeperBytes, kKeeperTag, 40000, counter, lone));
      CHECK_CUDA(gpushim::kernels::fill_pattern(company, kKeeperBytes, kKeeperTag, other));
      CHECK_CUDA(gpushim::kernels::spin_verify_pattern(keeper, kKeeperBytes, kKeeperTag, 150000, counter, lone));
      churn_for(100);
    }
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
      case kLegacyAfterCompany: CHECK_CUDA(gpushim::kernels::fill_pattern(b, size, tag_b, nullptr)); break;
      case kOlderBatchCopy: {
        CUdeviceptr dst = reinterpret_cast<CUdeviceptr>(b), src = reinterpret_cast<CUdeviceptr>(copy_source);
        std::size_t bytes = size, attributes_index = 0, failed_index = 0;
        CUmemcpyAttributes attributes{};
        attributes.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
        attributes.srcLocHint.type = attributes.dstLocHint.type = CU_MEM_LOCATION_TYPE_DEVICE;
        const CUresult rc = batch_copy_12080(&dst, &src, &bytes, 1, &attributes, &attributes_index, 1, &failed_index,
                                             static_cast<CUstream>(other));
        if (rc != CUDA_SUCCESS) {
          std::fprintf(stderr, "solo_race: cuMemcpyBatchAsync (12.8): error %d\n", static_cast<int>(rc));
          return 2;
        }
        break;
      }
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
  CHECK_CUDA(cudaFree(keeper));
  CHECK_CUDA(cudaFree(company));
  CHECK_CUDA(cudaFree(copy_source));
  CHECK_CUDA(cudaFree(counter));
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
