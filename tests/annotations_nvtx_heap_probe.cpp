// GPU probe, not part of the build: which memory compute-sanitizer accepts as an NVTX heap. Registers
// the guide's exact heap descriptor over (1) a cuMemAlloc allocation, (2) one cuMemCreate + cuMemMap +
// cuMemSetAccess range inside a larger reservation (what CudaPeerProvider::map makes), and (3) the same
// descriptor plus an ASCII message over a fresh cuMemAlloc allocation; then writes one byte past a
// registered 1000-byte region in (1) and (2). Under compute-sanitizer a refused heap prints
// "Call to nvtxMemHeapRegister failed" and its OOB write goes unreported.
//   nvcc -std=c++17 -x cu -o /tmp/nvtx_heap_probe tests/annotations_nvtx_heap_probe.cpp -lcuda
//   compute-sanitizer --tool memcheck --nvtx yes /tmp/nvtx_heap_probe
#include <cstdio>

#include <cuda.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExtMem.h>

__global__ void write_byte(unsigned char* p) { *p = 1; }

static nvtxDomainHandle_t g_domain;

static nvtxMemHeapHandle_t heap(CUdeviceptr base, size_t size, const char* message) {
  nvtxMemVirtualRangeDesc_t range{};
  range.size = size;
  range.ptr = reinterpret_cast<void*>(base);
  nvtxMemHeapDesc_t desc{};
  desc.extCompatID = NVTX_EXT_COMPATID_MEM;
  desc.structSize = sizeof(nvtxMemHeapDesc_t);
  desc.usage = NVTX_MEM_HEAP_USAGE_TYPE_SUB_ALLOCATOR;
  desc.type = NVTX_MEM_TYPE_VIRTUAL_ADDRESS;
  desc.typeSpecificDescSize = sizeof(nvtxMemVirtualRangeDesc_t);
  desc.typeSpecificDesc = &range;
  if (message) {
    desc.messageType = NVTX_MESSAGE_TYPE_ASCII;
    desc.message.ascii = message;
  }
  return nvtxMemHeapRegister(g_domain, &desc);
}

static void region(nvtxMemHeapHandle_t h, CUdeviceptr ptr, size_t size) {
  nvtxMemVirtualRangeDesc_t range{};
  range.size = size;
  range.ptr = reinterpret_cast<void*>(ptr);
  nvtxMemRegionsRegisterBatch_t batch{};
  batch.extCompatID = NVTX_EXT_COMPATID_MEM;
  batch.structSize = sizeof(nvtxMemRegionsRegisterBatch_t);
  batch.regionType = NVTX_MEM_TYPE_VIRTUAL_ADDRESS;
  batch.heap = h;
  batch.regionCount = 1;
  batch.regionDescElementSize = sizeof(nvtxMemVirtualRangeDesc_t);
  batch.regionDescElements = &range;
  nvtxMemRegionsRegister(g_domain, &batch);
}

static void oob(const char* what, nvtxMemHeapHandle_t h, CUdeviceptr base) {
  std::printf("probe: %s heap %s\n", what, h ? "accepted" : "REFUSED");
  if (!h) return;
  region(h, base + 256, 1000);
  write_byte<<<1, 1>>>(reinterpret_cast<unsigned char*>(base + 256 + 1000));  // one byte past the region
  std::printf("probe: %s OOB write done (%s); memcheck should report it\n", what,
              cudaGetErrorString(cudaDeviceSynchronize()));
}

int main() {
  cudaFree(0);  // runtime initialized before NVTX, as the guide requires
  g_domain = nvtxDomainCreateA("probe");
  CUdevice dev;
  cuCtxGetDevice(&dev);

  CUdeviceptr plain = 0;
  if (cuMemAlloc(&plain, 32u << 20) != CUDA_SUCCESS) return 1;
  oob("cuMemAlloc", heap(plain, 32u << 20, nullptr), plain);

  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = dev;
  size_t granularity = 0;
  cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  const size_t chunk = 32u << 20, reserved = 8 * chunk;
  CUdeviceptr va = 0;
  CUmemGenericAllocationHandle handle = 0;
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  if (cuMemAddressReserve(&va, reserved, granularity, 0, 0) != CUDA_SUCCESS ||
      cuMemCreate(&handle, chunk, &prop, 0) != CUDA_SUCCESS || cuMemMap(va + chunk, chunk, 0, handle, 0) != CUDA_SUCCESS ||
      cuMemSetAccess(va + chunk, chunk, &access, 1) != CUDA_SUCCESS) {
    std::printf("probe: VMM setup failed\n");
    return 1;
  }
  oob("cuMemMap", heap(va + chunk, chunk, nullptr), va + chunk);

  CUdeviceptr named = 0;
  if (cuMemAlloc(&named, 1u << 20) != CUDA_SUCCESS) return 1;
  std::printf("probe: cuMemAlloc heap with an ASCII message %s\n", heap(named, 1u << 20, "gpushim heap") ? "accepted" : "REFUSED");
  return 0;
}
