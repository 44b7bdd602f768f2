// CHECK_CUDA for the alloc_torture front ends: a failed runtime call is reported through torture::fail()
// (file:line, the call as written, the error's name and text) and ends the process with exit code 2. The
// runtime front end checks every call with it; the driver front end only the kernel handle look-ups,
// which go through the runtime (see kernels/pattern_kernels.h).
#pragma once

#include <cuda_runtime_api.h>

#include "test_apps/torture/torture_core.h"

namespace torture {

inline void check_runtime(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) fail(call, cudaGetErrorName(status), cudaGetErrorString(status), file, line);
}

}  // namespace torture

#define CHECK_CUDA(call) torture::check_runtime((call), #call, __FILE__, __LINE__)
