#include "kernels/pattern_kernels.h"

#include <algorithm>

namespace gpushim::kernels {
namespace {

constexpr unsigned kThreadsPerBlock = 256;
// Grid-stride loops: enough blocks to fill an H100 (132 SMs x 8 resident blocks of 256 threads) several
// times over without launching millions of blocks for a 1 GiB buffer.
constexpr unsigned kMaxFillBlocks = 4096;
// The spin kernel must have all its blocks resident at once so it lasts `duration` and not a multiple of
// it: 2 blocks per SM of a 132-SM H100 fits easily next to other work.
constexpr unsigned kMaxSpinBlocks = 264;

__device__ inline std::uint64_t global_timer_ns() {
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void fill_pattern_kernel(unsigned char* block, unsigned long long bytes, unsigned int tag) {
  const unsigned long long words = bytes / 4;
  auto* word_ptr = reinterpret_cast<std::uint32_t*>(block);  // blocks are >= 4-byte aligned (256 B)
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < words; i += stride)
    word_ptr[i] = pattern_word(tag, i);
  if (blockIdx.x == 0 && threadIdx.x == 0)
    for (unsigned long long b = words * 4; b < bytes; ++b) block[b] = pattern_byte(tag, b);
}

__device__ inline void add_mismatches(unsigned long long count, unsigned long long* mismatches) {
  if (count != 0) atomicAdd(mismatches, count);
}

__global__ void verify_pattern_kernel(const unsigned char* block, unsigned long long bytes,
                                      unsigned int tag, unsigned long long* mismatches) {
  const unsigned long long words = bytes / 4;
  const auto* word_ptr = reinterpret_cast<const std::uint32_t*>(block);
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  unsigned long long bad = 0;
  for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < words; i += stride)
    bad += word_ptr[i] != pattern_word(tag, i);
  if (blockIdx.x == 0 && threadIdx.x == 0)
    for (unsigned long long b = words * 4; b < bytes; ++b) bad += block[b] != pattern_byte(tag, b);
  add_mismatches(bad, mismatches);
}

__global__ void spin_verify_pattern_kernel(const unsigned char* block, unsigned long long bytes,
                                           unsigned int tag, unsigned long long duration_ns,
                                           unsigned long long* mismatches) {
  const unsigned long long words = bytes / 4;
  const auto* word_ptr = reinterpret_cast<const unsigned int*>(block);
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  const std::uint64_t start = global_timer_ns();
  unsigned long long bad = 0;
  do {
    // __ldcv: "cache volatile", fetched again on every pass, so a write another kernel makes to L2 or
    // memory while this one runs is seen instead of an L1 copy (or a value hoisted out of the loop).
    for (unsigned long long i = blockIdx.x * blockDim.x + threadIdx.x; i < words; i += stride)
      bad += __ldcv(word_ptr + i) != pattern_word(tag, i);
    if (blockIdx.x == 0 && threadIdx.x == 0)
      for (unsigned long long b = words * 4; b < bytes; ++b)
        bad += static_cast<unsigned char>(__ldcv(reinterpret_cast<const signed char*>(block) + b)) !=
               pattern_byte(tag, b);
  } while (global_timer_ns() - start < duration_ns);
  add_mismatches(bad, mismatches);
}

unsigned blocks_for(std::uint64_t bytes, unsigned max_blocks) {
  const std::uint64_t words = bytes / 4;
  const std::uint64_t wanted = (words + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned>(std::clamp<std::uint64_t>(wanted, 1, max_blocks));
}

}  // namespace

LaunchPlan launch_plan(PatternKernel kernel, std::uint64_t bytes) {
  const unsigned max_blocks = kernel == PatternKernel::spin ? kMaxSpinBlocks : kMaxFillBlocks;
  return LaunchPlan{blocks_for(bytes, max_blocks), kThreadsPerBlock};
}

cudaError_t kernel_function(PatternKernel kernel, cudaFunction_t* function) {
  switch (kernel) {
    case PatternKernel::fill:
      return cudaGetFuncBySymbol(function, reinterpret_cast<const void*>(&fill_pattern_kernel));
    case PatternKernel::verify:
      return cudaGetFuncBySymbol(function, reinterpret_cast<const void*>(&verify_pattern_kernel));
    case PatternKernel::spin:
      return cudaGetFuncBySymbol(function, reinterpret_cast<const void*>(&spin_verify_pattern_kernel));
  }
  return cudaErrorInvalidValue;
}

cudaError_t fill_pattern(void* block, std::uint64_t bytes, std::uint32_t tag, cudaStream_t stream) {
  const LaunchPlan plan = launch_plan(PatternKernel::fill, bytes);
  fill_pattern_kernel<<<plan.grid, plan.block, 0, stream>>>(static_cast<unsigned char*>(block), bytes, tag);
  return cudaGetLastError();
}

cudaError_t verify_pattern(const void* block, std::uint64_t bytes, std::uint32_t tag,
                           unsigned long long* mismatches, cudaStream_t stream) {
  const LaunchPlan plan = launch_plan(PatternKernel::verify, bytes);
  verify_pattern_kernel<<<plan.grid, plan.block, 0, stream>>>(static_cast<const unsigned char*>(block),
                                                               bytes, tag, mismatches);
  return cudaGetLastError();
}

cudaError_t spin_verify_pattern(const void* block, std::uint64_t bytes, std::uint32_t tag,
                                std::uint32_t duration_us, unsigned long long* mismatches,
                                cudaStream_t stream) {
  const LaunchPlan plan = launch_plan(PatternKernel::spin, bytes);
  const unsigned long long duration_ns = static_cast<unsigned long long>(duration_us) * 1000ull;
  spin_verify_pattern_kernel<<<plan.grid, plan.block, 0, stream>>>(
      static_cast<const unsigned char*>(block), bytes, tag, duration_ns, mismatches);
  return cudaGetLastError();
}

}  // namespace gpushim::kernels
