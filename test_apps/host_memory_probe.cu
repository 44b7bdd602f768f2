// Probe: does the driver accept host-located VMM memory (CU_MEM_LOCATION_TYPE_HOST_NUMA / HOST), mapped for
// the device, and what bandwidth does a kernel get on it vs device memory? Prints facts, one per line.
// Its results on the lent H100s are in docs/host-spill.md, which GPUSHIM_SPILL=host is built on. Not a
// test: a program to run by hand on a new GPU or driver (no gpushim: it asks the plain driver).
//   nvcc -O2 -arch=sm_90 host_memory_probe.cu -lcuda   (or the build's test_apps/host_memory_probe)
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <chrono>
#include <algorithm>
#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char* s_; cuGetErrorName(r_, &s_); printf("FAIL %s -> %s\n", #x, s_); } } while (0)
static bool ok(CUresult r, const char* what) { const char* s; cuGetErrorName(r, &s); printf("%-60s %s\n", what, s); return r == CUDA_SUCCESS; }

__global__ void read_k(const float4* p, size_t n, float* out) {
  float acc = 0; for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) { float4 v = p[i]; acc += v.x + v.y + v.z + v.w; }
  if (acc == 1234.5f) *out = acc;
}
__global__ void write_k(float4* p, size_t n, float val) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) p[i] = make_float4(val, val, val, val);
}
__global__ void verify_k(const float4* p, size_t n, float val, unsigned long long* bad) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) { float4 v = p[i]; if (v.x != val || v.w != val) atomicAdd(bad, 1ull); }
}
static double bw(void* p, size_t bytes, bool write) {
  float* out; cudaMalloc(&out, 4); size_t n = bytes / 16; std::vector<double> gbs;
  for (int it = 0; it < 7; ++it) {
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b); cudaEventRecord(a);
    if (write) write_k<<<1056, 512>>>((float4*)p, n, 1.0f); else read_k<<<1056, 512>>>((const float4*)p, n, out);
    cudaEventRecord(b); cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b);
    if (it >= 2) gbs.push_back(bytes / (ms * 1e6));
  }
  std::sort(gbs.begin(), gbs.end()); cudaFree(out); return gbs[gbs.size() / 2];
}
int main() {
  cudaFree(0); CUdevice dev; cuCtxGetDevice(&dev); int n = 0; cuDeviceGetCount(&n);
  char name[128]; cuDeviceGetName(name, 128, dev); int drv; cuDriverGetVersion(&drv);
  printf("device %s, driver API %d, %d devices\n", name, drv, n);
  int v;
  struct { CUdevice_attribute a; const char* s; } attrs[] = {
    {CU_DEVICE_ATTRIBUTE_NUMA_CONFIG, "NUMA_CONFIG"}, {CU_DEVICE_ATTRIBUTE_NUMA_ID, "NUMA_ID"},
    {CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, "HOST_NUMA_ID"},
    {CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, "HOST_NUMA_VMM_SUPPORTED"},
    {CU_DEVICE_ATTRIBUTE_HOST_NUMA_MEMORY_POOLS_SUPPORTED, "HOST_NUMA_MEMORY_POOLS_SUPPORTED"},
    {CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, "VMM_SUPPORTED"},
    {CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS, "PAGEABLE_MEMORY_ACCESS"},
    {CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, "CONCURRENT_MANAGED_ACCESS"},
    {CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT, "TEXTURE_ALIGNMENT"},
  };
  for (auto& a : attrs) { CUresult r = cuDeviceGetAttribute(&v, a.a, dev); printf("attr %-36s = %d (%d)\n", a.s, v, (int)r); }
  int host_numa = 0; cuDeviceGetAttribute(&host_numa, CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, dev); if (host_numa < 0) host_numa = 0;
  size_t bytes = 1ull << 30;
  CUdeviceptr dptr; cuMemAlloc(&dptr, bytes);
  printf("device memory: read %.0f GB/s, write %.0f GB/s\n", bw((void*)dptr, bytes, false), bw((void*)dptr, bytes, true));
  struct { CUmemLocationType t; int id; const char* s; } locs[] = {
    {CU_MEM_LOCATION_TYPE_HOST_NUMA, host_numa, "HOST_NUMA"}, {CU_MEM_LOCATION_TYPE_HOST, 0, "HOST"},
    {CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT, 0, "HOST_NUMA_CURRENT"}};
  for (auto& L : locs) {
    printf("--- location %s id %d\n", L.s, L.id);
    CUmemAllocationProp prop = {}; prop.type = CU_MEM_ALLOCATION_TYPE_PINNED; prop.location.type = L.t; prop.location.id = L.id;
    size_t gmin = 0, grec = 0;
    if (!ok(cuMemGetAllocationGranularity(&gmin, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "granularity minimum")) continue;
    cuMemGetAllocationGranularity(&grec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    printf("granularity min %zu rec %zu\n", gmin, grec);
    CUmemGenericAllocationHandle h;
    auto t0 = std::chrono::steady_clock::now();
    if (!ok(cuMemCreate(&h, bytes, &prop, 0), "cuMemCreate 1 GiB")) continue;
    auto t1 = std::chrono::steady_clock::now();
    printf("cuMemCreate 1 GiB took %.1f us\n", std::chrono::duration<double, std::micro>(t1 - t0).count());
    CUdeviceptr va; CK(cuMemAddressReserve(&va, bytes, 0, 0, 0));
    if (!ok(cuMemMap(va, bytes, 0, h, 0), "cuMemMap")) continue;
    CUmemAccessDesc acc[2] = {}; int na = n > 1 ? 2 : 1;
    for (int i = 0; i < na; ++i) { acc[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE; acc[i].location.id = i; acc[i].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; }
    t0 = std::chrono::steady_clock::now();
    if (!ok(cuMemSetAccess(va, bytes, acc, na), "cuMemSetAccess devices")) continue;
    t1 = std::chrono::steady_clock::now();
    printf("cuMemSetAccess 1 GiB took %.1f us\n", std::chrono::duration<double, std::micro>(t1 - t0).count());
    { unsigned mt0 = 0; CUresult r0 = cuPointerGetAttribute(&mt0, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, va);
      printf("pointer MEMORY_TYPE before CPU access %u (%d)\n", mt0, (int)r0); }
    CUmemAccessDesc hacc = {}; hacc.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA; hacc.location.id = host_numa; hacc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    bool host_ok = ok(cuMemSetAccess(va, bytes, &hacc, 1), "cuMemSetAccess host (CPU access)");
    printf("kernel on host-located: read %.1f GB/s, write %.1f GB/s\n", bw((void*)va, bytes, false), bw((void*)va, bytes, true));
    unsigned long long* bad; cudaMallocManaged(&bad, 8); *bad = 0;
    write_k<<<1056, 512>>>((float4*)va, bytes / 16, 3.0f); verify_k<<<1056, 512>>>((const float4*)va, bytes / 16, 3.0f, bad);
    cudaError_t e = cudaDeviceSynchronize(); printf("verify: %s, %llu bad\n", cudaGetErrorString(e), *bad);
    if (host_ok) printf("CPU reads first float: %f\n", ((float*)va)[0]);
    CUmemAllocationProp q = {}; CK(cuMemGetAllocationPropertiesFromHandle(&q, h)); printf("props location type %d id %d\n", q.location.type, q.location.id);
    CUpointer_attribute pa = CU_POINTER_ATTRIBUTE_MEMORY_TYPE; unsigned mt = 0; cuPointerGetAttribute(&mt, pa, va); printf("pointer MEMORY_TYPE %u\n", mt);
    if (n > 1) { cudaSetDevice(1); printf("kernel on GPU1 over it: read %.1f GB/s\n", bw((void*)va, bytes, false)); cudaSetDevice(0); }
    size_t fr, tot; cuMemGetInfo(&fr, &tot); printf("cuMemGetInfo while mapped: free %zu total %zu\n", fr, tot);
    CK(cuMemUnmap(va, bytes)); CK(cuMemRelease(h)); CK(cuMemAddressFree(va, bytes));
  }
  // Managed memory preferred on host as a fallback comparison.
  void* m; cudaMallocManaged(&m, bytes);
  cudaMemLocation hl = {}; hl.type = cudaMemLocationTypeHost;
  cudaMemAdvise(m, bytes, cudaMemAdviseSetPreferredLocation, hl);
  cudaMemLocation dl = {}; dl.type = cudaMemLocationTypeDevice; dl.id = 0;
  cudaMemAdvise(m, bytes, cudaMemAdviseSetAccessedBy, dl);
  memset(m, 0, bytes);
  printf("managed preferred-host: read %.1f GB/s, write %.1f GB/s\n", bw(m, bytes, false), bw(m, bytes, true));
  return 0;
}
