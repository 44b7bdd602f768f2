// The range a pointer query reports must be the allocation's own: for several sizes, including blocks
// that share one 2 MiB granule, RANGE_START_ADDR / RANGE_SIZE (cuPointerGetAttribute and
// cuPointerGetAttributes) and cuMemGetAddressRange, asked with a pointer into the middle of each block.
//
//   pointer_query_check [--exact]   --exact: the size must equal the requested size (under gpushim);
//                                   without it the driver may round it up (cuMemAlloc's own answer).
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda.h>

namespace {

int failures = 0;

void expect(bool ok, const char* what, size_t bytes, unsigned long long got, unsigned long long want) {
  if (ok) return;
  std::fprintf(stderr, "pointer_query_check: %zu-byte block: %s is %llu (0x%llx), expected %llu (0x%llx)\n", bytes,
               what, got, got, want, want);
  ++failures;
}

bool size_ok(size_t reported, size_t requested, bool exact) {
  if (exact) return reported == requested;
  // cuMemAlloc's own answer may be rounded up, but never to a neighbour's bytes beyond its granule.
  return reported >= requested && reported <= ((requested + (size_t{2} << 20) - 1) & ~((size_t{2} << 20) - 1));
}

}  // namespace

#define CHECK(call)                                                                                  \
  do {                                                                                               \
    CUresult status_ = (call);                                                                       \
    if (status_ != CUDA_SUCCESS) {                                                                   \
      const char* name_ = nullptr;                                                                   \
      cuGetErrorName(status_, &name_);                                                               \
      std::fprintf(stderr, "pointer_query_check: %s failed: %s\n", #call, name_ ? name_ : "?");      \
      return 1;                                                                                      \
    }                                                                                                \
  } while (0)

int main(int argc, char** argv) {
  const bool exact = argc > 1 && std::strcmp(argv[1], "--exact") == 0;
  CHECK(cuInit(0));
  CUdevice device;
  CHECK(cuDeviceGet(&device, 0));
  CUcontext context;
  CHECK(cuDevicePrimaryCtxRetain(&context, device));
  CHECK(cuCtxSetCurrent(context));

  const size_t sizes[] = {256, 1000, 4096, 100000, size_t{1} << 20, (size_t{2} << 20) + 1, size_t{5} << 20, 777};
  std::vector<CUdeviceptr> blocks;
  for (size_t bytes : sizes) {
    CUdeviceptr block = 0;
    CHECK(cuMemAlloc(&block, bytes));
    blocks.push_back(block);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const size_t bytes = sizes[i];
    const CUdeviceptr block = blocks[i];
    const CUdeviceptr inside = block + bytes / 2;

    CUdeviceptr start = 0;
    size_t size = 0;
    CHECK(cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, inside));
    CHECK(cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, inside));
    expect(start == block, "cuPointerGetAttribute(RANGE_START_ADDR)", bytes, start, block);
    expect(size_ok(size, bytes, exact), "cuPointerGetAttribute(RANGE_SIZE)", bytes, size, bytes);

    CUpointer_attribute attributes[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                        CU_POINTER_ATTRIBUTE_RANGE_SIZE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
    unsigned int memory_type = 0;
    CUdeviceptr start2 = 0;
    size_t size2 = 0;
    int ordinal = -1;
    void* data[] = {&memory_type, &start2, &size2, &ordinal};
    CHECK(cuPointerGetAttributes(4, attributes, data, inside));
    expect(memory_type == CU_MEMORYTYPE_DEVICE, "MEMORY_TYPE", bytes, memory_type, CU_MEMORYTYPE_DEVICE);
    expect(start2 == block, "cuPointerGetAttributes(RANGE_START_ADDR)", bytes, start2, block);
    expect(size_ok(size2, bytes, exact), "cuPointerGetAttributes(RANGE_SIZE)", bytes, size2, bytes);
    expect(ordinal == 0, "DEVICE_ORDINAL", bytes, static_cast<unsigned long long>(ordinal), 0);

    CUdeviceptr base = 0;
    size_t range = 0;
    CHECK(cuMemGetAddressRange(&base, &range, inside));
    expect(base == block, "cuMemGetAddressRange base", bytes, base, block);
    expect(size_ok(range, bytes, exact), "cuMemGetAddressRange size", bytes, range, bytes);
  }
  for (CUdeviceptr block : blocks) CHECK(cuMemFree(block));
  std::printf("pointer_query_check: %zu blocks, %d failures: %s\n", blocks.size(), failures, failures ? "FAIL" : "PASS");
  return failures == 0 ? 0 : 1;
}
