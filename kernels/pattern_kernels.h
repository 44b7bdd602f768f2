// Kernels shared by the test apps and the GPU tests: fill a block with its pattern, verify it, and keep
// verifying it for a while (the "long reader" of the free-safety race). Host launchers use the runtime
// API; driver-API programs take the CUfunction handles and launch geometry from launch_plan().
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "kernels/pattern.h"

namespace gpushim::kernels {

// Kernel parameter lists, in order, for cuLaunchKernel users (each argument is passed by address):
//   fill:   (unsigned char* block, unsigned long long bytes, unsigned int tag)
//   verify: (const unsigned char* block, unsigned long long bytes, unsigned int tag,
//            unsigned long long* mismatches)
//   spin:   (const unsigned char* block, unsigned long long bytes, unsigned int tag,
//            unsigned long long duration_ns, unsigned long long* mismatches)
enum class PatternKernel { fill, verify, spin };

struct LaunchPlan {
  unsigned grid = 1;
  unsigned block = 1;
};

// Grid and block sizes the launchers below use for a block of `bytes`.
LaunchPlan launch_plan(PatternKernel kernel, std::uint64_t bytes);

// The kernel as a runtime function handle; cudaFunction_t is the driver's CUfunction, so a driver-API
// program can pass it to cuLaunchKernel. Requires the runtime to be initialised on the current context.
cudaError_t kernel_function(PatternKernel kernel, cudaFunction_t* function);

// Writes the pattern of `tag` over all `bytes` of `block`, in stream order.
cudaError_t fill_pattern(void* block, std::uint64_t bytes, std::uint32_t tag, cudaStream_t stream);

// Adds the number of words (and tail bytes) of `block` that differ from the pattern of `tag` to
// *mismatches (a device counter), in stream order.
cudaError_t verify_pattern(const void* block, std::uint64_t bytes, std::uint32_t tag,
                           unsigned long long* mismatches, cudaStream_t stream);

// Like verify_pattern, but re-reads the whole block again and again for at least `duration_us`
// microseconds (GPU global timer), bypassing the L1 cache, so a write by anyone else during that time is
// counted. Each thread block times itself, so the kernel lasts about duration_us once it is resident.
cudaError_t spin_verify_pattern(const void* block, std::uint64_t bytes, std::uint32_t tag,
                                std::uint32_t duration_us, unsigned long long* mismatches,
                                cudaStream_t stream);

}  // namespace gpushim::kernels
