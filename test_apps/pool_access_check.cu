// pool_access_check: a device's default memory pool made accessible from a peer with
// cudaMemPoolSetAccess (no cudaDeviceEnablePeerAccess), cudaMallocAsync on GPU 0, and a kernel on GPU 1
// over that memory, reading and writing. Natively the pool's access covers its blocks made before and
// after the call; gpushim serves cudaMallocAsync itself, so its blocks must follow the same access
// (docs/peers.md).
// "GPU 0" and "GPU 1" below are the pair of `--pair A,B` (default 0,1; test_apps/two_gpus.h).
// Exit status: 0 passed, 1 a check failed, 2 a CUDA call failed, 77 fewer than 2 GPUs (skipped).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/pattern_kernels.h"
#include "test_apps/two_gpus.h"

namespace {

using gpushim::kernels::fill_pattern;
using two_gpus::expect;
using two_gpus::mismatches_seen_from;

constexpr std::size_t kBytes = (std::size_t{48} << 20) + 4096;  // not a multiple of any granule
constexpr std::size_t kSmall = 1000;                            // a small block, from a slab under tiered

}  // namespace

int main(int argc, char** argv) {
  two_gpus::g_app = "pool_access_check";
  two_gpus::require_two_peer_gpus(argc, argv);
  const int zero = two_gpus::g_a, one = two_gpus::g_b;

  TWO_GPUS_CHECK(cudaSetDevice(zero));
  cudaStream_t stream = nullptr;
  TWO_GPUS_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void* before = nullptr;  // allocated before the pool's access is set
  TWO_GPUS_CHECK(cudaMallocAsync(&before, kBytes, stream));

  cudaMemPool_t pool = nullptr;
  TWO_GPUS_CHECK(cudaDeviceGetDefaultMemPool(&pool, zero));
  cudaMemAccessDesc access{};
  access.location.type = cudaMemLocationTypeDevice;
  access.location.id = one;
  access.flags = cudaMemAccessFlagsProtReadWrite;
  TWO_GPUS_CHECK(cudaMemPoolSetAccess(pool, &access, 1));

  void* after = nullptr;
  void* small = nullptr;
  TWO_GPUS_CHECK(cudaMallocAsync(&after, kBytes, stream));
  TWO_GPUS_CHECK(cudaMallocAsync(&small, kSmall, stream));
  TWO_GPUS_CHECK(fill_pattern(before, kBytes, 11, stream));
  TWO_GPUS_CHECK(fill_pattern(after, kBytes, 12, stream));
  TWO_GPUS_CHECK(fill_pattern(small, kSmall, 13, stream));
  TWO_GPUS_CHECK(cudaStreamSynchronize(stream));

  // GPU 1 reads GPU 0's cudaMallocAsync blocks; a fault shows as cudaErrorIllegalAddress (exit 2).
  expect(mismatches_seen_from(one, after, kBytes, 12) == 0, "a kernel on GPU 1 reads a block made after the call");
  expect(mismatches_seen_from(one, before, kBytes, 11) == 0, "a kernel on GPU 1 reads a block made before it");
  expect(mismatches_seen_from(one, small, kSmall, 13) == 0, "a kernel on GPU 1 reads a 1000-byte block");

  // GPU 1 writes into GPU 0's block; GPU 0 checks.
  TWO_GPUS_CHECK(cudaSetDevice(one));
  TWO_GPUS_CHECK(fill_pattern(after, kBytes, 21, nullptr));
  TWO_GPUS_CHECK(cudaDeviceSynchronize());
  expect(mismatches_seen_from(zero, after, kBytes, 21) == 0, "GPU 0 sees what a kernel on GPU 1 wrote");

  TWO_GPUS_CHECK(cudaSetDevice(zero));
  for (void* p : {before, after, small}) TWO_GPUS_CHECK(cudaFreeAsync(p, stream));
  TWO_GPUS_CHECK(cudaStreamSynchronize(stream));
  TWO_GPUS_CHECK(cudaStreamDestroy(stream));
  return two_gpus::finish();
}
