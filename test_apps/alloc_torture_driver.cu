// alloc_torture through the driver API (linked -lcuda): memory, streams, events and launches all go
// through cu* calls, so gpushim must catch the exported cuMemAlloc_v2/cuMemFree_v2/... symbols, not only
// what the runtime resolves with cuGetProcAddress. The kernels come from gpushim_kernels; their CUfunction
// handles are looked up once through the runtime (cudaGetFuncBySymbol) and launched with cuLaunchKernel.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/pattern_kernels.h"
#include "test_apps/torture/runtime_check.h"
#include "test_apps/torture/torture_core.h"

namespace {

const char* driver_error_name(CUresult status) {
  const char* name = nullptr;
  return cuGetErrorName(status, &name) == CUDA_SUCCESS && name ? name : "unknown CUresult";
}
const char* driver_error_text(CUresult status) {
  const char* text = nullptr;
  return cuGetErrorString(status, &text) == CUDA_SUCCESS && text ? text : "";
}
// The driver-API twin of torture::check_runtime (test_apps/torture/runtime_check.h).
void check_driver(CUresult status, const char* call, const char* file, int line) {
  if (status != CUDA_SUCCESS) torture::fail(call, driver_error_name(status), driver_error_text(status), file, line);
}

}  // namespace

// #call is taken here, before expansion: the message names cuMemAlloc as written, not cuMemAlloc_v2.
#define CHECK_CU(call) check_driver((call), #call, __FILE__, __LINE__)

namespace {

using gpushim::kernels::PatternKernel;
using torture::Stream;

CUdeviceptr as_device_pointer(const void* ptr) { return reinterpret_cast<CUdeviceptr>(ptr); }
void* as_host_view(CUdeviceptr ptr) { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(ptr)); }

class DriverDevice final : public torture::Device {
 public:
  explicit DriverDevice(CUcontext context) : context_(context) {
    CHECK_CUDA(gpushim::kernels::kernel_function(PatternKernel::fill, reinterpret_cast<cudaFunction_t*>(&fill_)));
    CHECK_CUDA(gpushim::kernels::kernel_function(PatternKernel::verify, reinterpret_cast<cudaFunction_t*>(&verify_)));
    CHECK_CUDA(gpushim::kernels::kernel_function(PatternKernel::spin, reinterpret_cast<cudaFunction_t*>(&spin_)));
  }
  std::string variant() const override { return "driver"; }
  void bind_thread() override { CHECK_CU(cuCtxSetCurrent(context_)); }
  Stream create_stream(bool non_blocking) override {
    CUstream stream = nullptr;
    CHECK_CU(cuStreamCreate(&stream, non_blocking ? CU_STREAM_NON_BLOCKING : CU_STREAM_DEFAULT));
    return stream;
  }
  void destroy_stream(Stream stream) override { CHECK_CU(cuStreamDestroy(stream)); }
  void* allocate(std::size_t bytes) override {
    CUdeviceptr ptr = 0;
    CHECK_CU(cuMemAlloc(&ptr, bytes));
    return as_host_view(ptr);
  }
  void* allocate_async(std::size_t bytes, Stream stream) override {
    CUdeviceptr ptr = 0;
    CHECK_CU(cuMemAllocAsync(&ptr, bytes, stream));
    return as_host_view(ptr);
  }
  void* allocate_pitch(std::size_t width, std::size_t height, std::size_t* pitch) override {
    // cuMemAllocPitch accepts element sizes 4, 8 and 16 only; rotate through them.
    static constexpr unsigned kElementSizes[] = {4, 8, 16};
    const unsigned element_size = kElementSizes[(width + height) % 3];
    CUdeviceptr ptr = 0;
    CHECK_CU(cuMemAllocPitch(&ptr, pitch, width, height, element_size));
    return as_host_view(ptr);
  }
  void free(void* block) override { CHECK_CU(cuMemFree(as_device_pointer(block))); }
  void free_async(void* block, Stream stream) override { CHECK_CU(cuMemFreeAsync(as_device_pointer(block), stream)); }
  void order_after(Stream waiter, Stream signaller) override {
    CUevent event = nullptr;
    CHECK_CU(cuEventCreate(&event, CU_EVENT_DISABLE_TIMING));
    CHECK_CU(cuEventRecord(event, signaller));
    CHECK_CU(cuStreamWaitEvent(waiter, event, 0));
    CHECK_CU(cuEventDestroy(event));  // legal: resources go once the recorded work completes
  }
  void synchronize(Stream stream) override { CHECK_CU(cuStreamSynchronize(stream)); }
  void synchronize_device() override { CHECK_CU(cuCtxSynchronize()); }
  void fill(void* block, std::uint64_t bytes, std::uint32_t tag, Stream stream) override {
    unsigned char* block_arg = static_cast<unsigned char*>(block);
    unsigned long long bytes_arg = bytes;
    unsigned int tag_arg = tag;
    void* args[] = {&block_arg, &bytes_arg, &tag_arg};
    launch(fill_, PatternKernel::fill, bytes, stream, args);
  }
  void verify(const void* block, std::uint64_t bytes, std::uint32_t tag, unsigned long long* mismatches,
              Stream stream) override {
    const unsigned char* block_arg = static_cast<const unsigned char*>(block);
    unsigned long long bytes_arg = bytes;
    unsigned int tag_arg = tag;
    unsigned long long* mismatches_arg = mismatches;
    void* args[] = {&block_arg, &bytes_arg, &tag_arg, &mismatches_arg};
    launch(verify_, PatternKernel::verify, bytes, stream, args);
  }
  void spin_verify(const void* block, std::uint64_t bytes, std::uint32_t tag, std::uint32_t duration_us,
                   unsigned long long* mismatches, Stream stream) override {
    const unsigned char* block_arg = static_cast<const unsigned char*>(block);
    unsigned long long bytes_arg = bytes;
    unsigned int tag_arg = tag;
    unsigned long long duration_ns = static_cast<unsigned long long>(duration_us) * 1000ull;
    unsigned long long* mismatches_arg = mismatches;
    void* args[] = {&block_arg, &bytes_arg, &tag_arg, &duration_ns, &mismatches_arg};
    launch(spin_, PatternKernel::spin, bytes, stream, args);
  }
  unsigned long long* new_counter() override {
    CUdeviceptr counter = 0;
    CHECK_CU(cuMemAlloc(&counter, sizeof(unsigned long long)));
    CHECK_CU(cuMemsetD8(counter, 0, sizeof(unsigned long long)));
    CHECK_CU(cuCtxSynchronize());
    return static_cast<unsigned long long*>(as_host_view(counter));
  }
  unsigned long long read_counter(const unsigned long long* counter) override {
    unsigned long long value = 0;
    CHECK_CU(cuMemcpyDtoH(&value, as_device_pointer(counter), sizeof value));
    return value;
  }

 private:
  void launch(CUfunction function, PatternKernel kernel, std::uint64_t bytes, Stream stream, void** args) {
    const gpushim::kernels::LaunchPlan plan = gpushim::kernels::launch_plan(kernel, bytes);
    CHECK_CU(cuLaunchKernel(function, plan.grid, 1, 1, plan.block, 1, 1, 0, stream, args, nullptr));
  }

  CUcontext context_;
  CUfunction fill_ = nullptr;
  CUfunction verify_ = nullptr;
  CUfunction spin_ = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
  torture::Options options;
  if (!torture::parse_options(argc, argv, &options)) return 2;
  CHECK_CU(cuInit(0));
  CUdevice device = 0;
  CHECK_CU(cuDeviceGet(&device, 0));
  CUcontext context = nullptr;
  // The primary context: the one the runtime uses too, so the kernel handles looked up through it are
  // valid in the context the driver calls run in.
  CHECK_CU(cuDevicePrimaryCtxRetain(&context, device));
  CHECK_CU(cuCtxSetCurrent(context));
  torture::Result result;
  {
    DriverDevice driver_device(context);
    result = torture::run(driver_device, options);
  }
  const int exit_code = torture::report("driver", result);
  CHECK_CU(cuDevicePrimaryCtxRelease(device));
  return exit_code;
}
