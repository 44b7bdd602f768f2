// peer_access: memory allocated with plain cudaMalloc on GPU 0, written by a kernel on GPU 1 and checked
// on GPU 0, without the program ever enabling peer access. Under gpushim with GPUSHIM_PEERS=all this must
// work, because gpushim maps its memory read-write for every listed device; without gpushim it faults.
// It also measures peer reads against local reads, and checks where memory physically lives for
// GPUSHIM_PLACEMENT=local|interleave|spill (the backing device of each granule, from the driver's own
// allocation properties, plus the data).
//
// With one GPU it runs the local checks only and prints "peer_access: 1 GPU: peer checks skipped".
// Exit status: 0 passed, 1 a check failed, 2 a CUDA call failed.
//
//   LD_PRELOAD=libgpushim.so GPUSHIM_BACKEND=vmm GPUSHIM_PEERS=all GPUSHIM_PLACEMENT=interleave ./peer_access
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/pattern_kernels.h"

namespace {

using gpushim::kernels::fill_pattern;
using gpushim::kernels::verify_pattern;

// Large enough that a read kernel runs for a while (bandwidth), and not a multiple of 2 MiB, so the
// tail of the last granule is covered too.
constexpr std::size_t kBufferBytes = (std::size_t{256} << 20) + (std::size_t{6} << 20) + 4096;
constexpr int kBandwidthRepeats = 11;  // odd: the median is one measurement
constexpr std::size_t kSpillChunk = std::size_t{1} << 30;

int failures = 0;

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    cudaError_t status_ = (call);                                                          \
    if (status_ != cudaSuccess) {                                                          \
      std::printf("peer_access: %s failed: %s (line %d)\n", #call, cudaGetErrorName(status_), \
                  __LINE__);                                                               \
      std::exit(2);                                                                        \
    }                                                                                      \
  } while (0)

void expect(bool ok, const char* what) {
  std::printf("peer_access: %s: %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

std::string placement_from_environment() {
  const char* value = std::getenv("GPUSHIM_PLACEMENT");
  return value && *value ? value : "local";
}

// Counts mismatches of `bytes` at `block` against the pattern of `tag`, with a kernel on `device`.
unsigned long long mismatches_seen_from(int device, const void* block, std::size_t bytes, std::uint32_t tag) {
  CHECK_CUDA(cudaSetDevice(device));
  unsigned long long* counter = nullptr;
  CHECK_CUDA(cudaMalloc(&counter, sizeof *counter));
  CHECK_CUDA(cudaMemset(counter, 0, sizeof *counter));
  CHECK_CUDA(verify_pattern(block, bytes, tag, counter, 0));
  unsigned long long count = 0;
  CHECK_CUDA(cudaMemcpy(&count, counter, sizeof count, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaFree(counter));
  return count;
}

void fill_from(int device, void* block, std::size_t bytes, std::uint32_t tag) {
  CHECK_CUDA(cudaSetDevice(device));
  CHECK_CUDA(fill_pattern(block, bytes, tag, 0));
  const cudaError_t status = cudaDeviceSynchronize();
  if (status != cudaSuccess) {
    // A fault here is sticky for the context: report and stop.
    std::printf("peer_access: kernel on GPU %d writing %p faulted (%s): memory not mapped for this GPU "
                "(is gpushim preloaded with GPUSHIM_PEERS=all?)\n",
                device, block, cudaGetErrorName(status));
    std::exit(1);
  }
}

__global__ void read_kernel(const uint4* data, std::size_t count, unsigned long long* sink) {
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < count;
       i += std::size_t{gridDim.x} * blockDim.x) {
    const uint4 v = data[i];
    acc.x ^= v.x;
    acc.y ^= v.y;
    acc.z ^= v.z;
    acc.w ^= v.w;
  }
  if ((acc.x ^ acc.y ^ acc.z ^ acc.w) == 0x12345678u) atomicAdd(sink, 1ull);  // keeps the loads alive
}

// Median GB/s of a kernel on `device` reading `bytes` of `block`.
double read_bandwidth(int device, const void* block, std::size_t bytes) {
  CHECK_CUDA(cudaSetDevice(device));
  int sms = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  unsigned long long* sink = nullptr;
  CHECK_CUDA(cudaMalloc(&sink, sizeof *sink));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  const std::size_t count = bytes / sizeof(uint4);
  std::vector<float> ms;
  for (int r = 0; r < kBandwidthRepeats + 1; ++r) {  // the first run warms up (TLB, clocks)
    CHECK_CUDA(cudaEventRecord(start));
    read_kernel<<<sms * 4, 512>>>(static_cast<const uint4*>(block), count, sink);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
    if (r > 0) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaFree(sink));
  return static_cast<double>(count * sizeof(uint4)) / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

// The device whose physical memory backs `address`, from the driver's allocation properties; -1 when the
// memory is not VMM memory (plain cuMemAlloc, gpushim not preloaded or another backend).
int backing_device(const void* address) {
  CUmemGenericAllocationHandle handle = 0;
  if (cuMemRetainAllocationHandle(&handle, const_cast<void*>(address)) != CUDA_SUCCESS) return -1;
  CUmemAllocationProp prop{};
  const CUresult rc = cuMemGetAllocationPropertiesFromHandle(&prop, handle);
  cuMemRelease(handle);  // the retain took a reference
  if (rc != CUDA_SUCCESS || prop.location.type != CU_MEM_LOCATION_TYPE_DEVICE) return -1;
  return prop.location.id;
}

constexpr std::size_t kGranule = std::size_t{2} << 20;  // the H100's VMM granularity (docs/measured-facts.md)

// Backing device of each 2 MiB granule of [block, block+bytes).
std::vector<int> granule_devices(const void* block, std::size_t bytes) {
  std::vector<int> devices;
  const auto start = reinterpret_cast<std::uintptr_t>(block);
  for (std::uintptr_t a = start & ~(kGranule - 1); a < start + bytes; a += kGranule)
    devices.push_back(backing_device(reinterpret_cast<const void*>(std::max(a, start))));
  return devices;
}

void check_placement(const std::string& policy, const std::vector<int>& devices, int gpus) {
  if (std::find(devices.begin(), devices.end(), -1) != devices.end()) {
    std::printf("peer_access: placement not checked: memory is not VMM memory (gpushim vmm backend?)\n");
    return;
  }
  const auto on = [&](int d) { return std::count(devices.begin(), devices.end(), d); };
  std::printf("peer_access: %zu granules:", devices.size());
  for (int d = 0; d < gpus; ++d) std::printf(" GPU %d: %ld", d, static_cast<long>(on(d)));
  std::printf("\n");
  if (policy == "interleave" && gpus > 1) {
    bool alternates = true;
    for (std::size_t i = 1; i < devices.size(); ++i) alternates &= devices[i] != devices[i - 1];
    expect(alternates && on(0) > 0 && on(1) > 0, "interleave: neighbouring granules on different GPUs");
  } else {
    expect(static_cast<std::size_t>(on(0)) == devices.size(), "all granules on GPU 0 (local, or room left)");
  }
}

void local_checks(const std::string& policy, int gpus) {
  CHECK_CUDA(cudaSetDevice(0));
  void* block = nullptr;
  CHECK_CUDA(cudaMalloc(&block, kBufferBytes));
  fill_from(0, block, kBufferBytes, 0x10ca1u);
  expect(mismatches_seen_from(0, block, kBufferBytes, 0x10ca1u) == 0, "GPU 0 writes, GPU 0 reads");
  check_placement(gpus > 1 ? policy : "local", granule_devices(block, kBufferBytes), gpus);
  std::printf("peer_access: GPU 0 reads GPU 0 memory: %.1f GB/s\n", read_bandwidth(0, block, kBufferBytes));
  CHECK_CUDA(cudaFree(block));
}

void peer_checks(const std::string& policy) {
  void* on0 = nullptr;
  void* on1 = nullptr;
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaMalloc(&on0, kBufferBytes));
  CHECK_CUDA(cudaSetDevice(1));
  CHECK_CUDA(cudaMalloc(&on1, kBufferBytes));

  fill_from(1, on0, kBufferBytes, 0x9e12u);
  expect(mismatches_seen_from(0, on0, kBufferBytes, 0x9e12u) == 0, "GPU 1 writes GPU 0's block, GPU 0 reads it");
  fill_from(0, on1, kBufferBytes, 0x9e13u);
  expect(mismatches_seen_from(1, on1, kBufferBytes, 0x9e13u) == 0, "GPU 0 writes GPU 1's block, GPU 1 reads it");
  expect(mismatches_seen_from(0, on0, kBufferBytes, 0x9e13u) != 0, "a wrong tag is caught (the check can fail)");

  const double local = read_bandwidth(1, on1, kBufferBytes);
  const double peer = read_bandwidth(1, on0, kBufferBytes);
  std::printf("peer_access: placement %s, GPU 1 reads: its own block %.1f GB/s, GPU 0's block %.1f GB/s "
              "(%.0f%%)\n", policy.c_str(), local, peer, 100.0 * peer / local);
  CHECK_CUDA(cudaFree(on1));
  CHECK_CUDA(cudaFree(on0));

  if (policy != "spill") return;
  // Spill: allocate on GPU 0 more than GPU 0 holds. With spill the rest comes from GPU 1; then every
  // chunk is written from GPU 1 and checked from GPU 0.
  CHECK_CUDA(cudaSetDevice(0));
  std::size_t free0 = 0, total0 = 0;
  CHECK_CUDA(cudaMemGetInfo(&free0, &total0));
  std::vector<void*> chunks;
  std::size_t got = 0;
  const std::size_t want = total0 + (std::size_t{2} << 30);
  while (got < want) {
    void* chunk = nullptr;
    if (cudaMalloc(&chunk, kSpillChunk) != cudaSuccess) {
      cudaGetLastError();
      break;
    }
    chunks.push_back(chunk);
    got += kSpillChunk;
  }
  std::printf("peer_access: spill: allocated %zu GiB on GPU 0 (GPU 0 has %zu GiB)\n", got >> 30, total0 >> 30);
  expect(got >= want, "spill: more than GPU 0's memory allocated on GPU 0");
  long on_peer = 0;
  unsigned long long bad = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    for (int d : granule_devices(chunks[i], kSpillChunk)) on_peer += d == 1;
    fill_from(1, chunks[i], kSpillChunk, 0x5b11u + static_cast<std::uint32_t>(i));
    bad += mismatches_seen_from(0, chunks[i], kSpillChunk, 0x5b11u + static_cast<std::uint32_t>(i));
  }
  std::printf("peer_access: spill: %ld granules live on GPU 1\n", on_peer);
  expect(on_peer > 0, "spill: part of GPU 0's memory lives on GPU 1");
  expect(bad == 0, "spill: every chunk written from GPU 1 reads back on GPU 0");
  CHECK_CUDA(cudaSetDevice(0));
  for (void* chunk : chunks) CHECK_CUDA(cudaFree(chunk));
}

}  // namespace

int main(int argc, char** argv) {
  std::string policy = placement_from_environment();
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--placement") == 0) policy = argv[i + 1];
  int gpus = 0;
  CHECK_CUDA(cudaGetDeviceCount(&gpus));
  if (cuInit(0) != CUDA_SUCCESS) {
    std::printf("peer_access: cuInit failed\n");
    return 2;
  }
  std::printf("peer_access: %d GPU(s), placement %s\n", gpus, policy.c_str());
  local_checks(policy, gpus);
  if (gpus < 2) {
    std::printf("peer_access: 1 GPU: peer checks skipped\n");
  } else {
    peer_checks(policy);
  }
  std::printf("peer_access: %s\n", failures == 0 ? "passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
