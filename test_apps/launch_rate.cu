// Kernels per second of a launch-bound loop: what gpushim's work-submission hooks cost
// (shim/work_submission_hooks.cpp). Knows nothing of gpushim: scripts/launch_overhead.sh runs it with and
// without LD_PRELOAD=libgpushim.so, pass after pass, and compares the medians.
//
//   launch_rate [launches per pass, default 200000] [passes, default 5]
// Prints one line per stream kind: "launch_rate <legacy|nonblocking> <median kernels per second> <min> <max>".
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

__global__ void empty_kernel() {}

namespace {

double launches_per_second(cudaStream_t stream, long launches) {
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < launches; ++i) empty_kernel<<<1, 1, 0, stream>>>();
  cudaStreamSynchronize(stream);
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  return launches / took.count();
}

}  // namespace

int main(int argc, char** argv) {
  const long launches = argc > 1 ? std::atol(argv[1]) : 200000;
  const int passes = argc > 2 ? std::atoi(argv[2]) : 5;
  if (launches <= 0 || passes <= 0) {
    std::fprintf(stderr, "usage: launch_rate [launches per pass > 0] [passes > 0]\n");
    return 2;
  }
  cudaStream_t nonblocking = nullptr;
  if (cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking) != cudaSuccess) {
    std::fprintf(stderr, "launch_rate: no GPU\n");
    return 77;
  }
  launches_per_second(nullptr, launches / 10);  // warm-up: module load, first launches
  launches_per_second(nonblocking, launches / 10);
  std::vector<double> legacy, other;
  for (int pass = 0; pass < passes; ++pass) {  // interleaved, so drift hits both alike
    legacy.push_back(launches_per_second(nullptr, launches));
    other.push_back(launches_per_second(nonblocking, launches));
  }
  if (cudaGetLastError() != cudaSuccess) {
    std::fprintf(stderr, "launch_rate: a launch failed\n");
    return 1;
  }
  for (auto* rates : {&legacy, &other}) {
    std::sort(rates->begin(), rates->end());
    std::printf("launch_rate %s %.0f %.0f %.0f\n", rates == &legacy ? "legacy" : "nonblocking",
                (*rates)[rates->size() / 2], rates->front(), rates->back());
  }
  cudaStreamDestroy(nonblocking);
  return 0;
}
