// For compute-sanitizer: a kernel that writes one element past the end of a block (the bug), or, with
// --in-bounds, exactly the block, or, with --after-free, into the block after cudaFree. memcheck must
// report the first and third and stay silent on the second; the block is 1000 floats, so the bad
// element lies in the slack a 256-byte-aligned allocator leaves, and a freed block inside a pool is
// still mapped memory: only gpushim's NVTX annotations can make these visible.
#include <cstdio>
#include <cstring>

#include <cuda_runtime.h>

__global__ void write_elements(float* block, int count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) block[i] = static_cast<float>(i);
}

int main(int argc, char** argv) {
  const bool in_bounds = argc > 1 && std::strcmp(argv[1], "--in-bounds") == 0;
  const bool after_free = argc > 1 && std::strcmp(argv[1], "--after-free") == 0;
  const int elements = 1000;
  float* neighbour_before = nullptr;
  float* block = nullptr;
  float* neighbour_after = nullptr;
  // Neighbours on both sides: inside a pool the bytes after the block are other live memory.
  if (cudaMalloc(&neighbour_before, 4096) != cudaSuccess || cudaMalloc(&block, elements * sizeof(float)) != cudaSuccess ||
      cudaMalloc(&neighbour_after, 4096) != cudaSuccess) {
    std::fprintf(stderr, "sanitizer_oob: cudaMalloc failed\n");
    return 1;
  }
  if (after_free) {
    cudaFree(block);  // neighbour_after keeps the pool from giving the memory back to the driver
    write_elements<<<1, 32>>>(block, 1);
    const cudaError_t status = cudaDeviceSynchronize();
    std::printf("sanitizer_oob: wrote 1 element into a freed block (%s)\n", cudaGetErrorString(status));
    cudaFree(neighbour_after);
    cudaFree(neighbour_before);
    return 0;
  }
  const int written = in_bounds ? elements : elements + 1;
  write_elements<<<(written + 255) / 256, 256>>>(block, written);
  const cudaError_t status = cudaDeviceSynchronize();
  std::printf("sanitizer_oob: wrote %d elements into a %d-element block (%s)\n", written, elements,
              cudaGetErrorString(status));
  cudaFree(neighbour_after);
  cudaFree(block);
  cudaFree(neighbour_before);
  return 0;  // the verdict is compute-sanitizer's
}
