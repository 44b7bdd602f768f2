// alloc_torture through the CUDA runtime API. The same source builds twice: against the static runtime
// (nvcc's default) and against libcudart.so (-cudart shared); the two reach the driver differently
// enough (docs/measured-facts.md) that gpushim must be proven under both.
#include <cuda_runtime.h>

#include "kernels/pattern_kernels.h"
#include "test_apps/torture/runtime_check.h"
#include "test_apps/torture/torture_core.h"

#ifndef ALLOC_TORTURE_VARIANT
#define ALLOC_TORTURE_VARIANT "runtime"
#endif

namespace {

using torture::Stream;

class RuntimeDevice final : public torture::Device {
 public:
  explicit RuntimeDevice(int device) : device_(device) {}
  std::string variant() const override { return ALLOC_TORTURE_VARIANT; }
  void bind_thread() override { CHECK_CUDA(cudaSetDevice(device_)); }
  Stream create_stream(bool non_blocking) override {
    cudaStream_t stream = nullptr;
    CHECK_CUDA(cudaStreamCreateWithFlags(&stream, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault));
    return stream;
  }
  void destroy_stream(Stream stream) override { CHECK_CUDA(cudaStreamDestroy(stream)); }
  void* allocate(std::size_t bytes) override {
    void* ptr = nullptr;
    CHECK_CUDA(cudaMalloc(&ptr, bytes));
    return ptr;
  }
  void* allocate_async(std::size_t bytes, Stream stream) override {
    void* ptr = nullptr;
    CHECK_CUDA(cudaMallocAsync(&ptr, bytes, stream));
    return ptr;
  }
  void* allocate_pitch(std::size_t width, std::size_t height, std::size_t* pitch) override {
    void* ptr = nullptr;
    CHECK_CUDA(cudaMallocPitch(&ptr, pitch, width, height));
    return ptr;
  }
  void free(void* block) override { CHECK_CUDA(cudaFree(block)); }
  void free_async(void* block, Stream stream) override { CHECK_CUDA(cudaFreeAsync(block, stream)); }
  void order_after(Stream waiter, Stream signaller) override {
    cudaEvent_t event = nullptr;
    CHECK_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    CHECK_CUDA(cudaEventRecord(event, signaller));
    CHECK_CUDA(cudaStreamWaitEvent(waiter, event, 0));
    CHECK_CUDA(cudaEventDestroy(event));  // legal: destruction waits for the recorded work internally
  }
  void synchronize(Stream stream) override { CHECK_CUDA(cudaStreamSynchronize(stream)); }
  void synchronize_device() override { CHECK_CUDA(cudaDeviceSynchronize()); }
  void fill(void* block, std::uint64_t bytes, std::uint32_t tag, Stream stream) override {
    CHECK_CUDA(gpushim::kernels::fill_pattern(block, bytes, tag, stream));
  }
  void verify(const void* block, std::uint64_t bytes, std::uint32_t tag, unsigned long long* mismatches,
              Stream stream) override {
    CHECK_CUDA(gpushim::kernels::verify_pattern(block, bytes, tag, mismatches, stream));
  }
  void spin_verify(const void* block, std::uint64_t bytes, std::uint32_t tag, std::uint32_t duration_us,
                   unsigned long long* mismatches, Stream stream) override {
    CHECK_CUDA(gpushim::kernels::spin_verify_pattern(block, bytes, tag, duration_us, mismatches, stream));
  }
  unsigned long long* new_counter() override {
    unsigned long long* counter = nullptr;
    CHECK_CUDA(cudaMalloc(&counter, sizeof *counter));
    CHECK_CUDA(cudaMemset(counter, 0, sizeof *counter));
    CHECK_CUDA(cudaDeviceSynchronize());  // the memset ran on the legacy stream; workers use others
    return counter;
  }
  unsigned long long read_counter(const unsigned long long* counter) override {
    unsigned long long value = 0;
    CHECK_CUDA(cudaMemcpy(&value, counter, sizeof value, cudaMemcpyDeviceToHost));
    return value;
  }

 private:
  int device_;
};

}  // namespace

int main(int argc, char** argv) {
  torture::Options options;
  if (!torture::parse_options(argc, argv, &options)) return 2;
  int device_count = 0;
  CHECK_CUDA(cudaGetDeviceCount(&device_count));
  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaFree(nullptr));  // create the context before the clock starts
  RuntimeDevice device(0);
  const torture::Result result = torture::run(device, options);
  return torture::report(device.variant(), result);
}
