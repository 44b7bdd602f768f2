// A fake libcuda.so.1 for the CPU tests of the interposer: the driver entry points gpushim's bootstrap,
// passthrough router and tests use, over malloc, each counting its calls. Its cuGetProcAddress answers
// like the real one, versions included (cuMemAlloc at 2000 is the 32-bit v1, cuCtxSynchronize at 13000
// is the v2 that takes a context), so the tests can tell a right substitution from a wrong one.
//
// Test-only exports: fake_cuda_calls(symbol), fake_cuda_function(symbol), fake_cuda_last_stream().
#include <cuda.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace {

constexpr std::size_t kAlignment = 256;  // what cuMemAlloc guarantees
constexpr size_t kFakeTotalMemory = size_t{16} << 30;

struct Counter {
  const char* symbol;
  std::atomic<int> calls;
};
Counter counters[] = {
    {"cuMemAlloc_v2", {0}},          {"cuMemFree_v2", {0}},       {"cuMemAllocPitch_v2", {0}},
    {"cuMemGetInfo_v2", {0}},        {"cuMemAllocAsync", {0}},    {"cuMemAllocAsync_ptsz", {0}},
    {"cuMemFreeAsync", {0}},         {"cuMemFreeAsync_ptsz", {0}}, {"cuMemAllocManaged", {0}},
    {"cuMemAllocFromPoolAsync", {0}}, {"cuMemAlloc", {0}},         {"cuStreamCreate", {0}},
    {"cuStreamCreateWithPriority", {0}}, {"cuStreamDestroy_v2", {0}}, {"cuStreamBeginCapture_v2", {0}},
    {"cuStreamBeginCapture_v2_ptsz", {0}}, {"cuStreamEndCapture", {0}}, {"cuStreamEndCapture_ptsz", {0}},
    {"cuStreamBeginCaptureToGraph", {0}}, {"cuStreamBeginCaptureToGraph_ptsz", {0}}, {"cuCtxSynchronize", {0}},
    {"cuCtxSynchronize_v2", {0}},
};

void count(const char* symbol) {
  for (Counter& counter : counters) {
    if (std::strcmp(counter.symbol, symbol) == 0) counter.calls.fetch_add(1);
  }
}

std::atomic<CUstream> last_stream{nullptr};
CUcontext const kFakeContext = reinterpret_cast<CUcontext>(0x1000);

CUdeviceptr host_allocate(size_t bytes) {
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  return reinterpret_cast<CUdeviceptr>(std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded));
}

CUresult allocate(CUdeviceptr* dptr, size_t bytes) {
  if (dptr == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  *dptr = host_allocate(bytes);
  return *dptr ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult release(CUdeviceptr dptr) {
  std::free(reinterpret_cast<void*>(dptr));
  return CUDA_SUCCESS;
}

CUstream effective_per_thread(CUstream stream) { return stream == nullptr ? CU_STREAM_PER_THREAD : stream; }

}  // namespace

// The v1 symbols cuda.h renames (cuMemAlloc -> cuMemAlloc_v2) keep their own names through asm labels.
extern "C" CUresult CUDAAPI fake_cuMemAlloc_v1(unsigned int* dptr, unsigned int bytes) __asm__("cuMemAlloc");
extern "C" CUresult CUDAAPI fake_cuGetProcAddress_v1(const char*, void**, int, cuuint64_t) __asm__("cuGetProcAddress");
extern "C" {
CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr*, size_t, CUstream);
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr, CUstream);
CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream, CUstreamCaptureMode);
CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream, CUgraph, const CUgraphNode*, const CUgraphEdgeData*,
                                                  size_t, CUstreamCaptureMode);
CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream, CUgraph*);
}

extern "C" {

int fake_cuda_calls(const char* symbol) {
  for (Counter& counter : counters) {
    if (std::strcmp(counter.symbol, symbol) == 0) return counter.calls.load();
  }
  return -1;
}

CUstream fake_cuda_last_stream() { return last_stream.load(); }

CUresult CUDAAPI fake_cuMemAlloc_v1(unsigned int*, unsigned int) {
  count("cuMemAlloc");
  return CUDA_ERROR_NOT_SUPPORTED;  // a 32-bit device pointer cannot hold a malloc address
}

CUresult CUDAAPI cuInit(unsigned int) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuDriverGetVersion(int* version) {
  *version = CUDA_VERSION;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuGetErrorName(CUresult, const char** name) {
  *name = "CUDA_ERROR_FAKE";
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGet(CUdevice* device, int ordinal) {
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *device = 0;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetCount(int* n) {
  *n = 1;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetAttribute(int* value, CUdevice_attribute, CUdevice) {
  *value = 0;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
  *bytes = kFakeTotalMemory;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice) {
  *context = kFakeContext;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetCurrent(CUcontext* context) {
  *context = kFakeContext;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxPushCurrent_v2(CUcontext) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxPopCurrent_v2(CUcontext* context) {
  if (context) *context = kFakeContext;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetDevice(CUdevice* device) {
  *device = 0;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxSynchronize() {
  count("cuCtxSynchronize");
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxSynchronize_v2(CUcontext) {
  count("cuCtxSynchronize_v2");
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
  count("cuMemAlloc_v2");
  return allocate(dptr, bytes);
}
CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
  count("cuMemFree_v2");
  return release(dptr);
}
CUresult CUDAAPI cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height, unsigned int) {
  count("cuMemAllocPitch_v2");
  *pitch = (width + kAlignment - 1) / kAlignment * kAlignment;
  return allocate(dptr, *pitch * height);
}
CUresult CUDAAPI cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  count("cuMemGetInfo_v2");
  *free_bytes = kFakeTotalMemory / 2;
  *total_bytes = kFakeTotalMemory;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemAllocManaged(CUdeviceptr* dptr, size_t bytes, unsigned int) {
  count("cuMemAllocManaged");
  return allocate(dptr, bytes);
}
CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream stream) {
  count("cuMemAllocAsync");
  last_stream.store(stream);
  return allocate(dptr, bytes);
}
CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytes, CUstream stream) {
  count("cuMemAllocAsync_ptsz");
  last_stream.store(effective_per_thread(stream));
  return allocate(dptr, bytes);
}
CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
  count("cuMemFreeAsync");
  last_stream.store(stream);
  return release(dptr);
}
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
  count("cuMemFreeAsync_ptsz");
  last_stream.store(effective_per_thread(stream));
  return release(dptr);
}
CUresult CUDAAPI cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytes, CUmemoryPool, CUstream stream) {
  count("cuMemAllocFromPoolAsync");
  last_stream.store(stream);
  return allocate(dptr, bytes);
}
CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr*, size_t*, CUdeviceptr) { return CUDA_ERROR_NOT_FOUND; }
CUresult CUDAAPI cuPointerGetAttribute(void*, CUpointer_attribute, CUdeviceptr) { return CUDA_ERROR_INVALID_VALUE; }

CUresult CUDAAPI cuStreamCreate(CUstream* stream, unsigned int) {
  count("cuStreamCreate");
  *stream = reinterpret_cast<CUstream>(host_allocate(1));
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamCreateWithPriority(CUstream* stream, unsigned int, int) {
  count("cuStreamCreateWithPriority");
  *stream = reinterpret_cast<CUstream>(host_allocate(1));
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamDestroy_v2(CUstream stream) {
  count("cuStreamDestroy_v2");
  std::free(stream);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode) {
  count("cuStreamBeginCapture_v2");
  last_stream.store(stream);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode) {
  count("cuStreamBeginCapture_v2_ptsz");
  last_stream.store(effective_per_thread(stream));
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCaptureToGraph(CUstream stream, CUgraph, const CUgraphNode*, const CUgraphEdgeData*,
                                             size_t, CUstreamCaptureMode) {
  count("cuStreamBeginCaptureToGraph");
  last_stream.store(stream);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph, const CUgraphNode*,
                                                  const CUgraphEdgeData*, size_t, CUstreamCaptureMode) {
  count("cuStreamBeginCaptureToGraph_ptsz");
  last_stream.store(effective_per_thread(stream));
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamEndCapture(CUstream stream, CUgraph* graph) {
  count("cuStreamEndCapture");
  last_stream.store(stream);
  *graph = nullptr;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream stream, CUgraph* graph) {
  count("cuStreamEndCapture_ptsz");
  last_stream.store(effective_per_thread(stream));
  *graph = nullptr;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamIsCapturing(CUstream, CUstreamCaptureStatus* status) {
  *status = CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamGetCtx(CUstream, CUcontext* context) {
  *context = kFakeContext;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamGetFlags(CUstream, unsigned int* flags) {
  *flags = 0;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventCreate(CUevent* event, unsigned int) {
  *event = reinterpret_cast<CUevent>(host_allocate(1));
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventRecord(CUevent, CUstream) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventQuery(CUevent) { return CUDA_SUCCESS; }  // the fake GPU has always finished
CUresult CUDAAPI cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventDestroy_v2(CUevent event) {
  std::free(event);
  return CUDA_SUCCESS;
}

}  // extern "C"

namespace {

struct ProcAddress {
  const char* name;
  int version;  // first version with this function; rows of one name, newest first
  void* function;
  void* per_thread_function;
};
template <typename F>
void* fn(F* f) {
  return reinterpret_cast<void*>(f);
}
#define FAKE_SAME(name, version, f) {name, version, fn(f), fn(f)}
const ProcAddress proc_addresses[] = {
    FAKE_SAME("cuInit", 2000, cuInit),
    FAKE_SAME("cuDriverGetVersion", 2020, cuDriverGetVersion),
    FAKE_SAME("cuCtxGetCurrent", 4000, cuCtxGetCurrent),
    FAKE_SAME("cuCtxSynchronize", 13000, cuCtxSynchronize_v2),
    FAKE_SAME("cuCtxSynchronize", 2000, cuCtxSynchronize),
    FAKE_SAME("cuMemAlloc", 3020, cuMemAlloc_v2),
    FAKE_SAME("cuMemAlloc", 2000, fake_cuMemAlloc_v1),
    FAKE_SAME("cuMemFree", 3020, cuMemFree_v2),
    FAKE_SAME("cuMemAllocPitch", 3020, cuMemAllocPitch_v2),
    FAKE_SAME("cuMemGetInfo", 3020, cuMemGetInfo_v2),
    FAKE_SAME("cuMemAllocManaged", 6000, cuMemAllocManaged),
    {"cuMemAllocAsync", 11020, fn(cuMemAllocAsync), fn(cuMemAllocAsync_ptsz)},
    {"cuMemFreeAsync", 11020, fn(cuMemFreeAsync), fn(cuMemFreeAsync_ptsz)},
    FAKE_SAME("cuMemAllocFromPoolAsync", 11020, cuMemAllocFromPoolAsync),
    FAKE_SAME("cuStreamCreate", 2000, cuStreamCreate),
    FAKE_SAME("cuStreamCreateWithPriority", 5050, cuStreamCreateWithPriority),
    FAKE_SAME("cuStreamDestroy", 4000, cuStreamDestroy_v2),
    {"cuStreamBeginCapture", 10010, fn(cuStreamBeginCapture_v2), fn(cuStreamBeginCapture_v2_ptsz)},
    {"cuStreamBeginCaptureToGraph", 12030, fn(cuStreamBeginCaptureToGraph), fn(cuStreamBeginCaptureToGraph_ptsz)},
    {"cuStreamEndCapture", 10000, fn(cuStreamEndCapture), fn(cuStreamEndCapture_ptsz)},
    FAKE_SAME("cuGetProcAddress", 12000, cuGetProcAddress_v2),
    FAKE_SAME("cuGetProcAddress", 11030, fake_cuGetProcAddress_v1),
};

bool known_name(const char* symbol) {
  for (const ProcAddress& row : proc_addresses) {
    if (std::strcmp(row.name, symbol) == 0) return true;
  }
  return false;
}

}  // namespace

extern "C" {

void* fake_cuda_proc_address(const char* symbol, int version, cuuint64_t flags) {
  for (const ProcAddress& row : proc_addresses) {
    if (std::strcmp(row.name, symbol) == 0 && version >= row.version) {
      return (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? row.per_thread_function : row.function;
    }
  }
  return nullptr;
}

CUresult CUDAAPI cuGetProcAddress_v2(const char* symbol, void** pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult* status) {
  *pfn = fake_cuda_proc_address(symbol, version, flags);
  if (status) {
    *status = *pfn                ? CU_GET_PROC_ADDRESS_SUCCESS
              : known_name(symbol) ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                                   : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  }
  return *pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult CUDAAPI fake_cuGetProcAddress_v1(const char* symbol, void** pfn, int version, cuuint64_t flags) {
  return cuGetProcAddress_v2(symbol, pfn, version, flags, nullptr);
}

}  // extern "C"
