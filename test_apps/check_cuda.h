// CHECK_CUDA for the test apps: a failed runtime call prints the program, where, the call and the
// runtime's error, and ends the program with exit code 2 (the apps' "a CUDA call failed", which the GPU
// tests tell apart from 1, a check that failed). _Exit: no static destructor may run CUDA calls after a
// failure.
#pragma once

#include <cuda_runtime.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#define CHECK_CUDA(call)                                                                                    \
  do {                                                                                                      \
    const cudaError_t status_ = (call);                                                                     \
    if (status_ != cudaSuccess) {                                                                           \
      std::fprintf(stderr, "%s: %s:%d: %s failed: %s (%s)\n", program_invocation_short_name, __FILE__,       \
                   __LINE__, #call, cudaGetErrorName(status_), cudaGetErrorString(status_));                \
      std::fflush(stdout);                                                                                  \
      std::fflush(stderr);                                                                                  \
      std::_Exit(2);                                                                                        \
    }                                                                                                       \
  } while (0)
