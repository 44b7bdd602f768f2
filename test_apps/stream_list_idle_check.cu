// A stream's async free list that gets no free for GPUSHIM_STREAM_LIST_IDLE is closed by gpushim behind a
// fence on every stream (router/router_state.h, StreamListAges). Checked on the GPU: the fence must hold
// the block while its stream still reads it, and the block must then serve other streams.
//
// A block A is allocated with cudaMallocAsync on a non-blocking stream S and filled; a long reader on S
// verifies it for --spin-ms; A is freed on S (stream-ordered after the reader) and S frees nothing more.
// The host then churns small cudaMalloc/cudaFree pairs for --churn-ms (the idle checks run in those
// frees: the list ages out while the reader still runs). Then the same size is allocated with cudaMalloc
// and filled on the legacy stream, which does not wait for S: handed A before the reader ended, the fill
// would be counted by the reader. After a synchronize and more churn (the fence queue is polled), the
// same size is allocated with cudaMallocAsync on another stream T: the device's used memory (NVML) must
// not grow by half a block or more. Aged out, A is back in the arena and serves T; still parked on S's
// list, it is invisible to T, which maps a block of its own. (Without gpushim the driver's pool gave A
// back at the synchronize and T maps its block again: no growth beyond what A held.) Whether A's memory
// goes back to the driver is the arena's release threshold's business, and its chunks may straddle the
// second block, which stays live.
//
//   stream_list_idle_check [--size BYTES] [--spin-ms MS] [--churn-ms MS]
// Exits 0 when the reader saw no mismatch, the second block holds its own pattern, and (where NVML is
// found) T's block did not grow the process; 1 otherwise, 2 on a failed CUDA call.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "check_cuda.h"
#include "device_memory_sampler.h"
#include "kernels/pattern_kernels.h"

namespace {

// Small pairs without a synchronize: gpushim's idle checks and fence polls run in their frees.
void churn_for(int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    for (int i = 0; i < 256; ++i) {
      void* p = nullptr;
      CHECK_CUDA(cudaMalloc(&p, 4096));
      CHECK_CUDA(cudaFree(p));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t size = std::size_t{256} << 20;
  int spin_ms = 600, churn_ms = 300;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--size" && i + 1 < argc) size = std::strtoull(argv[++i], nullptr, 0);
    else if (arg == "--spin-ms" && i + 1 < argc) spin_ms = std::atoi(argv[++i]);
    else if (arg == "--churn-ms" && i + 1 < argc) churn_ms = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: stream_list_idle_check [--size BYTES] [--spin-ms MS] [--churn-ms MS]\n");
      return 2;
    }
  }
  CHECK_CUDA(cudaFree(nullptr));  // the context, before NVML's baseline
  DeviceMemorySampler memory(0);
  cudaStream_t s = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  unsigned long long* counters = nullptr;  // [0]: the reader's mismatches, [1]: the second block's
  CHECK_CUDA(cudaMalloc(&counters, 2 * sizeof *counters));
  CHECK_CUDA(cudaMemset(counters, 0, 2 * sizeof *counters));
  constexpr std::uint32_t kTagA = 0x7100, kTagB = 0x7101;

  void* a = nullptr;
  CHECK_CUDA(cudaMallocAsync(&a, size, s));
  CHECK_CUDA(gpushim::kernels::fill_pattern(a, size, kTagA, s));
  CHECK_CUDA(cudaStreamSynchronize(s));
  const std::int64_t used_with_a = memory.used_now();
  CHECK_CUDA(gpushim::kernels::spin_verify_pattern(a, size, kTagA, 1000ull * spin_ms, &counters[0], s));
  CHECK_CUDA(cudaFreeAsync(a, s));
  const auto freed_at = std::chrono::steady_clock::now();
  churn_for(churn_ms);

  void* b = nullptr;
  CHECK_CUDA(cudaMalloc(&b, size));
  const std::int64_t used_with_both = memory.used_now();  // the reader still runs: A is held
  const bool b_is_a = b == a;
  const double b_after_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - freed_at).count();
  CHECK_CUDA(gpushim::kernels::fill_pattern(b, size, kTagB, nullptr));
  CHECK_CUDA(gpushim::kernels::verify_pattern(b, size, kTagB, &counters[1], nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  unsigned long long seen[2] = {};
  CHECK_CUDA(cudaMemcpy(seen, counters, sizeof seen, cudaMemcpyDeviceToHost));
  churn_for(100);
  const std::int64_t used_after_reader = memory.used_now();  // A's memory, unless it went to the driver
  cudaStream_t t = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&t, cudaStreamNonBlocking));
  void* c = nullptr;
  CHECK_CUDA(cudaMallocAsync(&c, size, t));
  CHECK_CUDA(cudaStreamSynchronize(t));
  const std::int64_t used_at_end = memory.used_now();
  CHECK_CUDA(cudaFreeAsync(c, t));
  CHECK_CUDA(cudaStreamSynchronize(t));
  CHECK_CUDA(cudaStreamDestroy(t));
  CHECK_CUDA(cudaFree(b));

  bool ok = seen[0] == 0 && seen[1] == 0;
  std::printf("stream_list_idle_check: %zu MiB, reader %d ms, churn %d ms: reader mismatches %llu, second block "
              "mismatches %llu, second block %s A (%.0f ms after the free)\n",
              size >> 20, spin_ms, churn_ms, seen[0], seen[1], b_is_a ? "is" : "is not", b_after_ms);
  if (memory.available()) {
    const bool reused = used_at_end < used_with_both + static_cast<std::int64_t>(size / 2);
    std::printf("stream_list_idle_check: device memory used above the start: %.1f MiB with A, %.1f MiB with A "
                "and the second block, %.1f MiB after the reader, %.1f MiB with the second block and another "
                "stream's%s\n",
                used_with_a / 1048576.0, used_with_both / 1048576.0, used_after_reader / 1048576.0,
                used_at_end / 1048576.0, reused ? "" : ": A's memory did not serve the other stream");
    ok = ok && reused;
  } else {
    std::printf("stream_list_idle_check: NVML not found: the memory check is skipped\n");
  }
  CHECK_CUDA(cudaFree(counters));
  CHECK_CUDA(cudaStreamDestroy(s));
  std::printf("stream_list_idle_check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
