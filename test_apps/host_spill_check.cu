// Allocates 1.5x the device memory the process may use (the total cudaMemGetInfo reports: under gpushim
// with GPUSHIM_LIMIT, the limit), with plain cudaMalloc, runs kernels over all of it and verifies every
// byte. Under GPUSHIM_SPILL=host it must all succeed: what the device cannot hold is served from host
// memory (docs/host-spill.md). It knows nothing of gpushim; it asks the driver where each block's
// physical memory lives (cuMemRetainAllocationHandle + cuMemGetAllocationPropertiesFromHandle) and
// prints how much is on the device and on the host, and the bandwidth a kernel gets from each.
//
//   host_spill_check [--factor 1.5] [--expect spill|oom]
//     spill (default): every allocation succeeds, every byte verifies, and at least
//                      (factor - 1) x total lies in host memory while device memory stays <= total.
//     oom:             an allocation past the total fails with cudaErrorMemoryAllocation (what a limit
//                      without spilling does), and the blocks had until then still verify.
// Refuses to run (exit 2) where the total is above 16 GiB: 1.5x an 80 GB device would pin 40 GB of host
// memory. Run it under GPUSHIM_LIMIT.
// Exit status: 0 passed, 1 a check failed, 2 a CUDA call failed or bad usage.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/pattern_kernels.h"

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t GiB = std::size_t{1} << 30;
constexpr std::size_t kMostTotal = 16 * GiB;
// A mix of what programs allocate: large tensors, mid-sized ones, odd sizes that end in a tail, and
// small blocks (the tiered backend's slab) among them.
constexpr std::size_t kSizes[] = {256 * MiB, 96 * MiB + 512, 1 * MiB + 300, 200 * 1024 + 7, 64 * MiB, 3 * MiB};

#define CHECK(call)                                                                                   \
  do {                                                                                                \
    const cudaError_t e_ = (call);                                                                    \
    if (e_ != cudaSuccess) {                                                                          \
      std::printf("host_spill_check: %s failed: %s (line %d)\n", #call, cudaGetErrorString(e_), __LINE__); \
      std::exit(2);                                                                                   \
    }                                                                                                 \
  } while (0)

// Where the physical memory at `address` lives: 'D' device, 'H' host, '?' not VMM memory.
char location_of(const void* address) {
  CUmemGenericAllocationHandle handle = 0;
  if (cuMemRetainAllocationHandle(&handle, const_cast<void*>(address)) != CUDA_SUCCESS) return '?';
  CUmemAllocationProp prop{};
  const CUresult rc = cuMemGetAllocationPropertiesFromHandle(&prop, handle);
  cuMemRelease(handle);  // the retain took a reference
  if (rc != CUDA_SUCCESS) return '?';
  if (prop.location.type == CU_MEM_LOCATION_TYPE_DEVICE) return 'D';
  if (prop.location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA || prop.location.type == CU_MEM_LOCATION_TYPE_HOST)
    return 'H';
  return '?';
}

struct Block {
  void* p = nullptr;
  std::size_t bytes = 0;
  std::uint32_t tag = 0;
  char where = '?';
};

__global__ void read_all(const float4* p, std::size_t n, float* sink) {
  float acc = 0;
  for (std::size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float4 v = p[i];
    acc += v.x + v.y + v.z + v.w;
  }
  if (acc == 1234.5f) *sink = acc;  // never true: keeps the loads
}

// Median read bandwidth of a kernel over `bytes` at `p`, GB/s.
double read_bandwidth(const void* p, std::size_t bytes, float* sink) {
  std::vector<double> rates;
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 5; ++i) {
    CHECK(cudaEventRecord(start));
    read_all<<<1056, 512>>>(static_cast<const float4*>(p), bytes / sizeof(float4), sink);
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    rates.push_back(static_cast<double>(bytes) / (ms * 1e6));
  }
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  double factor = 1.5;
  std::string expect = "spill";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--factor") && i + 1 < argc) {
      factor = std::atof(argv[++i]);
    } else if (!std::strcmp(argv[i], "--expect") && i + 1 < argc) {
      expect = argv[++i];
    } else {
      std::printf("usage: host_spill_check [--factor F] [--expect spill|oom]\n");
      return 2;
    }
  }
  if (factor <= 1.0 || (expect != "spill" && expect != "oom")) {
    std::printf("host_spill_check: --factor must be > 1 and --expect spill or oom\n");
    return 2;
  }
  CHECK(cudaFree(nullptr));
  std::size_t free_bytes = 0, total = 0;
  CHECK(cudaMemGetInfo(&free_bytes, &total));
  std::printf("host_spill_check: cudaMemGetInfo total %.2f GiB, free %.2f GiB; allocating %.2fx = %.2f GiB\n",
              total / double(GiB), free_bytes / double(GiB), factor, factor * total / double(GiB));
  if (total > kMostTotal) {
    std::printf("host_spill_check: total above 16 GiB: run it under GPUSHIM_LIMIT (e.g. 4GiB)\n");
    return 2;
  }
  const std::size_t target = static_cast<std::size_t>(factor * static_cast<double>(total));

  std::vector<Block> blocks;
  std::size_t allocated = 0;
  cudaError_t failure = cudaSuccess;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; allocated < target; ++i) {
    Block b;
    b.bytes = std::min(kSizes[i % (sizeof kSizes / sizeof kSizes[0])], target - allocated + 256);
    b.tag = static_cast<std::uint32_t>(0x5ca1e000u + i);
    failure = cudaMalloc(&b.p, b.bytes);
    if (failure != cudaSuccess) break;
    CHECK(gpushim::kernels::fill_pattern(b.p, b.bytes, b.tag, nullptr));
    allocated += b.bytes;
    blocks.push_back(b);
  }
  CHECK(cudaDeviceSynchronize());
  const double alloc_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  cudaGetLastError();  // the failed cudaMalloc, if any, is judged below

  // Every byte of every block, after all of them were written: a block that overlapped another, or a
  // mapping that lost its data, shows as mismatches.
  unsigned long long* mismatches = nullptr;
  CHECK(cudaMallocManaged(&mismatches, sizeof *mismatches));
  *mismatches = 0;
  for (const Block& b : blocks) CHECK(gpushim::kernels::verify_pattern(b.p, b.bytes, b.tag, mismatches, nullptr));
  CHECK(cudaDeviceSynchronize());

  std::size_t on_device = 0, on_host = 0, unknown = 0;
  const Block* spilled = nullptr;
  const Block* resident = nullptr;
  for (Block& b : blocks) {
    b.where = location_of(b.p);
    (b.where == 'D' ? on_device : b.where == 'H' ? on_host : unknown) += b.bytes;
    if (b.where == 'H' && (!spilled || b.bytes > spilled->bytes)) spilled = &b;
    if (b.where == 'D' && (!resident || b.bytes > resident->bytes)) resident = &b;
  }
  std::printf("host_spill_check: %zu blocks, %.2f GiB in %.2f s; on the device %.2f GiB, in host memory %.2f GiB, "
              "not VMM %.2f GiB; mismatched words %llu\n",
              blocks.size(), allocated / double(GiB), alloc_s, on_device / double(GiB), on_host / double(GiB),
              unknown / double(GiB), *mismatches);

  int failed = 0;
  auto require = [&failed](bool ok, const char* what) {
    std::printf("host_spill_check: %s: %s\n", ok ? "ok" : "FAILED", what);
    failed += ok ? 0 : 1;
  };
  require(*mismatches == 0, "every byte of every block holds its pattern");

  if (expect == "oom") {
    require(failure == cudaErrorMemoryAllocation, "the allocation past the limit failed with cudaErrorMemoryAllocation");
    require(allocated <= total, "no more than the limit was handed out");
    require(on_host == 0, "nothing lives in host memory");
  } else {
    require(failure == cudaSuccess, "every allocation succeeded");
    require(allocated >= target, "the whole factor x total was allocated");
    require(on_host + total >= allocated, "what the device cannot hold is in host memory");
    require(on_device <= total, "device memory stays within the limit");

    if (spilled) {
      // Copies through the copy engines, and what the program is told about the pointer.
      std::vector<unsigned char> back(4096);
      CHECK(cudaMemcpy(back.data(), static_cast<const char*>(spilled->p) + spilled->bytes - back.size(), back.size(),
                       cudaMemcpyDeviceToHost));
      std::size_t bad = 0;
      for (std::size_t i = 0; i < back.size(); ++i)
        bad += back[i] != gpushim::kernels::pattern_byte(spilled->tag, spilled->bytes - back.size() + i);
      require(bad == 0, "cudaMemcpy from a spilled block returns its bytes");
      cudaPointerAttributes attributes{};
      CHECK(cudaPointerGetAttributes(&attributes, spilled->p));
      std::printf("host_spill_check: cudaPointerGetAttributes(spilled block): type %d, device %d, hostPointer %p\n",
                  static_cast<int>(attributes.type), attributes.device, attributes.hostPointer);
      require(attributes.type == cudaMemoryTypeDevice && attributes.device == 0,
              "a spilled block is device memory to the program (cudaPointerGetAttributes)");
      float* sink = nullptr;
      CHECK(cudaMalloc(&sink, sizeof(float)));
      const std::size_t span = std::min<std::size_t>(spilled->bytes, 256 * MiB) / 16 * 16;
      const double host_rate = read_bandwidth(spilled->p, span, sink);
      const double device_rate = resident ? read_bandwidth(resident->p, std::min(span, resident->bytes / 16 * 16), sink) : 0;
      std::printf("host_spill_check: kernel read bandwidth: device memory %.0f GB/s, spilled (host) memory %.0f GB/s\n",
                  device_rate, host_rate);
      CHECK(cudaFree(sink));
    }
    std::size_t free_after = 0, total_after = 0;
    CHECK(cudaMemGetInfo(&free_after, &total_after));
    std::printf("host_spill_check: cudaMemGetInfo now: total %.2f GiB, free %.2f GiB\n", total_after / double(GiB),
                free_after / double(GiB));
    require(total_after == total, "cudaMemGetInfo's total stays the device's (host memory does not count)");
  }
  for (const Block& b : blocks) CHECK(cudaFree(b.p));
  CHECK(cudaFree(mismatches));
  std::printf("host_spill_check: %s\n", failed ? "FAILED" : "passed");
  return failed ? 1 : 0;
}
