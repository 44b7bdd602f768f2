// texture_check: a float linear texture object (cudaResourceTypeLinear, filter mode linear, as the
// reporting program made it) over small cudaMalloc blocks of many sizes, 100 B to 64 KiB, all live at
// once, each read back through tex1Dfetch in a kernel. cudaCreateTextureObject requires the block to
// start on the device's texture alignment (cudaDevAttrTextureAlignment, 512 B on the H100 and H200);
// every native cudaMalloc block does, so every gpushim block must too.
// Exit status: 0 passed, 1 a check failed, 2 a CUDA call failed.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "check_cuda.h"

namespace {

int failures = 0;

__global__ void fetch_all(cudaTextureObject_t texture, float* out, int count) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += gridDim.x * blockDim.x)
    out[i] = tex1Dfetch<float>(texture, i);
}

float value_at(std::size_t block, int i) { return static_cast<float>(block) * 0.25f + static_cast<float>(i); }

struct Block {
  std::size_t bytes;
  float* data;
};

}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
    std::printf("texture_check: no GPU: skipped\n");
    return 77;
  }
  CHECK_CUDA(cudaSetDevice(0));
  int alignment = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&alignment, cudaDevAttrTextureAlignment, 0));
  std::printf("texture_check: texture alignment %d B\n", alignment);

  // Sizes from a few hundred bytes up, 1.25x apart plus odd offsets, two of each, all live at once so
  // that blocks sit side by side as in a real program.
  std::vector<Block> blocks;
  for (std::size_t bytes = 100; bytes <= 64 * 1024; bytes = bytes * 5 / 4 + 12) {
    for (int copy = 0; copy < 2; ++copy) {
      Block b{bytes, nullptr};
      CHECK_CUDA(cudaMalloc(&b.data, bytes));
      blocks.push_back(b);
    }
  }

  float* out = nullptr;
  CHECK_CUDA(cudaMalloc(&out, 64 * 1024));
  int misaligned = 0, refused = 0, wrong = 0;
  for (std::size_t n = 0; n < blocks.size(); ++n) {
    const Block& b = blocks[n];
    const int elements = static_cast<int>(b.bytes / sizeof(float));
    std::vector<float> host(elements);
    for (int i = 0; i < elements; ++i) host[i] = value_at(n, i);
    CHECK_CUDA(cudaMemcpy(b.data, host.data(), elements * sizeof(float), cudaMemcpyHostToDevice));
    if (reinterpret_cast<std::uintptr_t>(b.data) % static_cast<std::uintptr_t>(alignment) != 0) ++misaligned;

    cudaResourceDesc resource{};
    resource.resType = cudaResourceTypeLinear;
    resource.res.linear.devPtr = b.data;
    resource.res.linear.desc = cudaCreateChannelDesc<float>();
    resource.res.linear.sizeInBytes = elements * sizeof(float);
    cudaTextureDesc description{};
    description.filterMode = cudaFilterModeLinear;
    description.readMode = cudaReadModeElementType;
    description.addressMode[0] = cudaAddressModeClamp;
    cudaTextureObject_t texture = 0;
    const cudaError_t created = cudaCreateTextureObject(&texture, &resource, &description, nullptr);
    if (created != cudaSuccess) {
      if (refused++ < 5)
        std::printf("texture_check: block of %zu B at %p (%llu mod %d): cudaCreateTextureObject: %s\n", b.bytes,
                    static_cast<void*>(b.data),
                    static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(b.data) % alignment), alignment,
                    cudaGetErrorName(created));
      continue;
    }
    fetch_all<<<(elements + 255) / 256, 256>>>(texture, out, elements);
    CHECK_CUDA(cudaGetLastError());
    std::vector<float> back(elements);
    CHECK_CUDA(cudaMemcpy(back.data(), out, elements * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaDestroyTextureObject(texture));
    for (int i = 0; i < elements; ++i) {
      if (back[i] != host[i]) {
        if (wrong++ < 5)
          std::printf("texture_check: block of %zu B, element %d: read %g, wrote %g\n", b.bytes, i, back[i], host[i]);
        break;
      }
    }
  }
  std::printf("texture_check: %zu blocks (100 B to 64 KiB): %d misaligned, %d refused a texture object, %d read back wrong\n",
              blocks.size(), misaligned, refused, wrong);
  failures = misaligned + refused + wrong;
  for (const Block& b : blocks) CHECK_CUDA(cudaFree(b.data));
  CHECK_CUDA(cudaFree(out));
  std::printf("texture_check: %s\n", failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
