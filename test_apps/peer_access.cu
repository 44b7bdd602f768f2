// peer_access: memory allocated with plain cudaMalloc on GPU 0, written by a kernel on GPU 1 and checked
// on GPU 0, without the program ever enabling peer access. Under gpushim with GPUSHIM_PEERS=all this must
// work, because gpushim maps its memory read-write for every listed device; without gpushim it faults.
// It also measures peer reads against local reads, and checks where memory physically lives for
// GPUSHIM_PLACEMENT=local|interleave|spill (the backing device of each granule, from the driver's own
// allocation properties, plus the data).
//
// With N >= 2 GPUs every ordered pair is checked (A writes B's block, B reads it) and a table of read
// bandwidth, GPU A reading GPU B's block, is printed (rows "peer_access: bandwidth ..."). With
// `--cap BYTES` (run with GPUSHIM_LIMIT=BYTES) it checks the per-device cap instead: GPU 0 allocates until
// it is refused, no GPU may back more than BYTES of it, and more than BYTES must fit in all.
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
#include <map>
#include <string>
#include <vector>

#include "check_cuda.h"
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
    // The stripe goes round every GPU in order: granule i+1 lives on the GPU after granule i's.
    bool in_turn = true;
    for (std::size_t i = 1; i < devices.size(); ++i) in_turn &= devices[i] == (devices[i - 1] + 1) % gpus;
    bool every_gpu = true;
    for (int d = 0; d < gpus; ++d) every_gpu &= on(d) > 0;
    expect(in_turn, "interleave: each granule on the GPU after its neighbour's, round all GPUs");
    expect(every_gpu, "interleave: every GPU backs granules");
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

void peer_checks(const std::string& policy, int gpus) {
  std::vector<void*> blocks(static_cast<std::size_t>(gpus), nullptr);
  for (int d = 0; d < gpus; ++d) {
    CHECK_CUDA(cudaSetDevice(d));
    CHECK_CUDA(cudaMalloc(&blocks[static_cast<std::size_t>(d)], kBufferBytes));
  }
  // Every ordered pair: a kernel on `writer` fills `owner`'s block, a kernel on `owner` checks it.
  char what[128];
  for (int owner = 0; owner < gpus; ++owner) {
    for (int writer = 0; writer < gpus; ++writer) {
      if (writer == owner) continue;
      const auto tag = static_cast<std::uint32_t>(0x9e00u + owner * 64 + writer);
      fill_from(writer, blocks[static_cast<std::size_t>(owner)], kBufferBytes, tag);
      std::snprintf(what, sizeof what, "GPU %d writes GPU %d's block, GPU %d reads it", writer, owner, owner);
      expect(mismatches_seen_from(owner, blocks[static_cast<std::size_t>(owner)], kBufferBytes, tag) == 0, what);
    }
  }
  expect(mismatches_seen_from(0, blocks[0], kBufferBytes, 0x1234u) != 0, "a wrong tag is caught (the check can fail)");

  // Read bandwidth of every ordered pair: row = the GPU whose kernel reads, column = the GPU that
  // allocated the block (under placement local, the GPU whose memory it is).
  std::printf("peer_access: bandwidth GB/s, placement %s, row reads column's block:\n", policy.c_str());
  std::printf("peer_access: bandwidth reader");
  for (int owner = 0; owner < gpus; ++owner) std::printf("  block@%d", owner);
  std::printf("\n");
  for (int reader = 0; reader < gpus; ++reader) {
    std::printf("peer_access: bandwidth GPU %d ", reader);
    for (int owner = 0; owner < gpus; ++owner)
      std::printf(" %8.1f", read_bandwidth(reader, blocks[static_cast<std::size_t>(owner)], kBufferBytes));
    std::printf("\n");
  }
  for (int d = gpus - 1; d >= 0; --d) {
    CHECK_CUDA(cudaSetDevice(d));
    CHECK_CUDA(cudaFree(blocks[static_cast<std::size_t>(d)]));
  }

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
  long on_peer = 0, elsewhere = 0;
  unsigned long long bad = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    for (int d : granule_devices(chunks[i], kSpillChunk)) {
      on_peer += d == 1;
      elsewhere += d != 0 && d != 1;
    }
    fill_from(1, chunks[i], kSpillChunk, 0x5b11u + static_cast<std::uint32_t>(i));
    bad += mismatches_seen_from(0, chunks[i], kSpillChunk, 0x5b11u + static_cast<std::uint32_t>(i));
  }
  std::printf("peer_access: spill: %ld granules live on GPU 1, %ld on later GPUs\n", on_peer, elsewhere);
  expect(on_peer > 0, "spill: part of GPU 0's memory lives on GPU 1");
  // Peers are taken in order while their room is unknown (docs/peers.md): 2 GiB over GPU 0's memory fits
  // on GPU 1, so no later GPU may hold any of it.
  expect(elsewhere == 0, "spill: the overflow goes to GPU 1 first, none to later GPUs");
  expect(bad == 0, "spill: every chunk written from GPU 1 reads back on GPU 0");
  CHECK_CUDA(cudaSetDevice(0));
  for (void* chunk : chunks) CHECK_CUDA(cudaFree(chunk));
}

// The per-device cap under GPUSHIM_PEERS (docs/peers.md): GPU 0 allocates 256 MiB chunks until it is
// refused. Counted from the driver's own record of where each granule lives, no GPU may back more than
// `cap`, more than one cap's worth must fit, and the data written from the last GPU must read back on
// GPU 0. Under spill the first chunk must be all on GPU 0 (the local device fills first).
void cap_checks(const std::string& policy, int gpus, std::size_t cap) {
  constexpr std::size_t kChunk = std::size_t{256} << 20;
  CHECK_CUDA(cudaSetDevice(0));
  unsigned long long* counter = nullptr;  // allocated before the devices are full
  CHECK_CUDA(cudaMalloc(&counter, sizeof *counter));
  const std::size_t most = (static_cast<std::size_t>(gpus) + 1) * cap / kChunk + 1;  // past this, no cap holds
  std::vector<void*> chunks;
  while (chunks.size() < most) {
    void* chunk = nullptr;
    if (cudaMalloc(&chunk, kChunk) != cudaSuccess) {
      cudaGetLastError();
      break;
    }
    chunks.push_back(chunk);
  }
  std::map<std::uintptr_t, int> granules;  // granule address -> backing device, each granule once
  for (void* chunk : chunks) {
    const auto start = reinterpret_cast<std::uintptr_t>(chunk);
    const std::vector<int> devices = granule_devices(chunk, kChunk);
    for (std::size_t i = 0; i < devices.size(); ++i) granules[(start & ~(kGranule - 1)) + i * kGranule] = devices[i];
  }
  std::vector<std::size_t> bytes_on(static_cast<std::size_t>(gpus), 0);
  long unknown = 0;
  for (const auto& [address, device] : granules) {
    if (device >= 0 && device < gpus) bytes_on[static_cast<std::size_t>(device)] += kGranule;
    else ++unknown;
  }
  const std::size_t total = chunks.size() * kChunk;
  std::printf("peer_access: cap %zu MiB, placement %s: GPU 0 allocated %zu MiB in %zu chunks; backed by",
              cap >> 20, policy.c_str(), total >> 20, chunks.size());
  bool under_cap = true, every_gpu = true;
  for (int d = 0; d < gpus; ++d) {
    std::printf(" GPU %d: %zu MiB", d, bytes_on[static_cast<std::size_t>(d)] >> 20);
    under_cap &= bytes_on[static_cast<std::size_t>(d)] <= cap;
    every_gpu &= bytes_on[static_cast<std::size_t>(d)] > 0;
  }
  std::printf("\n");
  expect(unknown == 0, "cap: every granule is VMM memory on a GPU (gpushim vmm backend?)");
  expect(under_cap, "cap: no GPU backs more than the cap");
  expect(total > cap, "cap: more than one cap's worth fits across the GPUs");
  expect(gpus < 2 || every_gpu, "cap: every GPU backs part of it");
  expect(chunks.size() < most, "cap: allocation is refused in the end");
  if (policy == "spill" && !chunks.empty()) {
    bool local_first = true;
    for (int d : granule_devices(chunks[0], kChunk)) local_first &= d == 0;
    expect(local_first, "cap: spill fills GPU 0 first");
  }
  unsigned long long bad = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const auto tag = 0xca90u + static_cast<std::uint32_t>(i);
    fill_from(gpus - 1, chunks[i], kChunk, tag);
    CHECK_CUDA(cudaSetDevice(0));
    CHECK_CUDA(cudaMemset(counter, 0, sizeof *counter));
    CHECK_CUDA(verify_pattern(chunks[i], kChunk, tag, counter, 0));
    unsigned long long count = 0;
    CHECK_CUDA(cudaMemcpy(&count, counter, sizeof count, cudaMemcpyDeviceToHost));
    bad += count;
  }
  expect(bad == 0, "cap: every chunk written from the last GPU reads back on GPU 0");
  CHECK_CUDA(cudaSetDevice(0));
  for (void* chunk : chunks) CHECK_CUDA(cudaFree(chunk));
  CHECK_CUDA(cudaFree(counter));
}

}  // namespace

int main(int argc, char** argv) {
  std::string policy = placement_from_environment();
  std::size_t cap = 0;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--placement") == 0) policy = argv[i + 1];
    if (std::strcmp(argv[i], "--cap") == 0) cap = std::strtoull(argv[i + 1], nullptr, 10);
  }
  int gpus = 0;
  CHECK_CUDA(cudaGetDeviceCount(&gpus));
  if (cuInit(0) != CUDA_SUCCESS) {
    std::printf("peer_access: cuInit failed\n");
    return 2;
  }
  std::printf("peer_access: %d GPU(s), placement %s\n", gpus, policy.c_str());
  if (cap > 0) {
    cap_checks(policy, gpus, cap);
  } else {
    local_checks(policy, gpus);
    if (gpus < 2) {
      std::printf("peer_access: 1 GPU: peer checks skipped\n");
    } else {
      peer_checks(policy, gpus);
    }
  }
  std::printf("peer_access: %s\n", failures == 0 ? "passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
