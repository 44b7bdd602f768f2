// gpu_probe: exits 0 when at least one CUDA device is usable, 77 (ctest's "skipped") when there is none
// or the driver cannot be initialised, and prints one line saying which. The GPU tests call it first.
#include <cuda_runtime.h>

#include <cstdio>

int main() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    std::printf("no GPU: skipped (cudaGetDeviceCount: %s, %d devices)\n",
                status == cudaSuccess ? "ok" : cudaGetErrorName(status), count);
    return 77;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::printf("no GPU: skipped (cudaGetDeviceProperties failed)\n");
    return 77;
  }
  std::printf("gpu_probe: %d device(s); device 0: %s, compute capability %d.%d\n", count, prop.name,
              prop.major, prop.minor);
  return 0;
}
