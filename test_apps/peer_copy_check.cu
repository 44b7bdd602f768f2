// peer_copy_check: peer access as a program enables it. 64 MB on each GPU with cudaMalloc, one made
// before cudaDeviceEnablePeerAccess (both ways) and one after, then cudaMemcpy with cudaMemcpyDefault
// from GPU 0's block to GPU 1's, cudaMemcpyPeer back, and kernels on each GPU reading the other's
// block. Natively every allocation of the peer is reachable once peer access is enabled, including
// those made before the call; gpushim must give the same (docs/peers.md). Also disables and re-enables
// peer access, which natively is allowed and leaves the blocks reachable again.
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

constexpr std::size_t kBytes = std::size_t{64} << 20;
constexpr std::uint32_t kTagOnZero = 0x5eed0;
constexpr std::uint32_t kTagOnOne = 0x5eed1;

}  // namespace

int main(int argc, char** argv) {
  two_gpus::g_app = "peer_copy_check";
  two_gpus::require_two_peer_gpus(argc, argv);
  const int zero = two_gpus::g_a, one = two_gpus::g_b;

  // GPU 0's block exists before peer access is enabled.
  void* on_zero = nullptr;
  TWO_GPUS_CHECK(cudaSetDevice(zero));
  TWO_GPUS_CHECK(cudaMalloc(&on_zero, kBytes));
  TWO_GPUS_CHECK(fill_pattern(on_zero, kBytes, kTagOnZero, nullptr));
  TWO_GPUS_CHECK(cudaDeviceSynchronize());

  TWO_GPUS_CHECK(cudaDeviceEnablePeerAccess(one, 0));  // GPU 0 reaches GPU 1's memory
  TWO_GPUS_CHECK(cudaSetDevice(one));
  TWO_GPUS_CHECK(cudaDeviceEnablePeerAccess(zero, 0));  // GPU 1 reaches GPU 0's memory

  // GPU 1's block is made after.
  void* on_one = nullptr;
  TWO_GPUS_CHECK(cudaMalloc(&on_one, kBytes));

  // The failing call of the report: a default-kind copy from GPU 0's block into GPU 1's.
  TWO_GPUS_CHECK(cudaSetDevice(zero));
  // A device-to-device cudaMemcpy does not wait for the copy on the host: it is ordered on the current
  // device's legacy stream only, so that device is synchronized before another device reads the result.
  const cudaError_t copy = cudaMemcpy(on_one, on_zero, kBytes, cudaMemcpyDefault);
  std::printf("peer_copy_check: cudaMemcpy(GPU 1 <- GPU 0, cudaMemcpyDefault): %s\n", cudaGetErrorName(copy));
  expect(copy == cudaSuccess, "cudaMemcpyDefault from GPU 0 to GPU 1 succeeds");
  TWO_GPUS_CHECK(cudaDeviceSynchronize());
  expect(mismatches_seen_from(one, on_one, kBytes, kTagOnZero) == 0, "GPU 1's copy holds GPU 0's data");

  // Kernels across: GPU 1 reads GPU 0's older block, GPU 0 reads GPU 1's newer one.
  expect(mismatches_seen_from(one, on_zero, kBytes, kTagOnZero) == 0, "a kernel on GPU 1 reads GPU 0's block");
  TWO_GPUS_CHECK(cudaSetDevice(one));
  TWO_GPUS_CHECK(fill_pattern(on_one, kBytes, kTagOnOne, nullptr));
  TWO_GPUS_CHECK(cudaDeviceSynchronize());
  expect(mismatches_seen_from(zero, on_one, kBytes, kTagOnOne) == 0, "a kernel on GPU 0 reads GPU 1's block");

  // cudaMemcpyPeer back, and a default-kind copy issued from GPU 1's side.
  const cudaError_t peer = cudaMemcpyPeer(on_zero, zero, on_one, one, kBytes);
  expect(peer == cudaSuccess, "cudaMemcpyPeer from GPU 1 to GPU 0 succeeds");
  TWO_GPUS_CHECK(cudaDeviceSynchronize());
  expect(mismatches_seen_from(zero, on_zero, kBytes, kTagOnOne) == 0, "GPU 0's block holds GPU 1's data");
  TWO_GPUS_CHECK(cudaSetDevice(one));
  TWO_GPUS_CHECK(fill_pattern(on_one, kBytes, kTagOnZero, nullptr));
  TWO_GPUS_CHECK(cudaDeviceSynchronize());
  expect(cudaMemcpy(on_zero, on_one, kBytes, cudaMemcpyDefault) == cudaSuccess,
         "cudaMemcpyDefault from GPU 1 to GPU 0 (issued on GPU 1) succeeds");
  TWO_GPUS_CHECK(cudaDeviceSynchronize());
  expect(mismatches_seen_from(zero, on_zero, kBytes, kTagOnZero) == 0, "GPU 0's block holds the new data");

  // Disable and enable again: the blocks are reachable again, as natively.
  TWO_GPUS_CHECK(cudaSetDevice(one));
  TWO_GPUS_CHECK(cudaDeviceDisablePeerAccess(zero));
  TWO_GPUS_CHECK(cudaDeviceEnablePeerAccess(zero, 0));
  expect(mismatches_seen_from(one, on_zero, kBytes, kTagOnZero) == 0,
         "after disable and enable, a kernel on GPU 1 reads GPU 0's block");

  TWO_GPUS_CHECK(cudaSetDevice(zero));
  TWO_GPUS_CHECK(cudaFree(on_zero));
  TWO_GPUS_CHECK(cudaSetDevice(one));
  TWO_GPUS_CHECK(cudaFree(on_one));
  return two_gpus::finish();
}
