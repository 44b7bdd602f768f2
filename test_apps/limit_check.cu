// The memory cap and the out-of-memory path, as a program sees them (issue: the backend family).
// Run under gpushim with GPUSHIM_LIMIT=1GiB (tests/gpu.cmake does, for every backend):
//  - cudaMemGetInfo reports the cap as total, and free within it;
//  - 128 MiB blocks can be allocated until the cap, then cudaMalloc fails with
//    cudaErrorMemoryAllocation and gpushim prints its out-of-memory report on stderr;
//  - after a free, allocation works again, and the memory is usable;
//  - after freeing everything, cudaMemGetInfo counts gpushim's cached memory as free;
//  - each refused call is the runtime's error, recorded for cudaGetLastError too: the failed cudaMalloc
//    and cudaMallocAsync, and cudaFree and cudaFreeAsync of a pointer inside a block. Built three times
//    (test_apps/CMakeLists.txt): with the static runtime; as limit_check_shared with libcudart.so,
//    whose cudaMalloc/cudaFree and cudaMallocAsync/cudaFreeAsync gpushim serves without entering the
//    runtime (shim/runtime_entry_points.cpp) and hands the errors back to it; and as limit_check_ptsz,
//    the shared build with a per-thread default stream, whose stream-ordered calls are the _ptsz forms.
// Exit 0 pass, 1 fail, 2 bad setup. Knows nothing of gpushim beyond the variable it reads.
#include <cuda_runtime.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kCap = size_t{1} << 30;   // the GPUSHIM_LIMIT the test is run with
constexpr size_t kBlock = 128 * kMiB;

int failures = 0;
void check(bool ok, const char* what) {
  std::printf("limit_check: %s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

// Captures what this process writes to fd 2 (gpushim writes with write(2)) while `body` runs.
template <typename Body>
std::string capture_stderr(Body body) {
  char path[] = "/tmp/limit_check.XXXXXX";
  int file = mkstemp(path);
  if (file < 0) return "";
  unlink(path);
  int saved = dup(2);
  dup2(file, 2);
  body();
  dup2(saved, 2);
  close(saved);
  std::string text;
  char buf[4096];
  lseek(file, 0, SEEK_SET);
  for (ssize_t n; (n = read(file, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  close(file);
  return text;
}

}  // namespace

int main() {
  const char* limit = std::getenv("GPUSHIM_LIMIT");
  if (!limit || std::strcmp(limit, "1GiB") != 0) {
    std::printf("limit_check: run with GPUSHIM_LIMIT=1GiB under gpushim\n");
    return 2;
  }
  if (cudaFree(nullptr) != cudaSuccess) return 2;

  size_t free_bytes = 0, total_bytes = 0;
  check(cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess, "cudaMemGetInfo succeeds");
  check(total_bytes == kCap, "cudaMemGetInfo reports the cap as total");
  check(free_bytes <= total_bytes && free_bytes >= kCap - 64 * kMiB, "free is within the cap, nearly all of it");

  std::vector<void*> blocks;
  cudaError_t last = cudaSuccess;
  std::string report = capture_stderr([&] {
    for (int i = 0; i < 64; ++i) {  // 64 x 128 MiB = 8 GiB: far past the cap
      void* p = nullptr;
      last = cudaMalloc(&p, kBlock);
      if (last != cudaSuccess) break;
      blocks.push_back(p);
    }
  });
  std::printf("limit_check: %zu blocks of 128 MiB before the cap\n", blocks.size());
  check(last == cudaErrorMemoryAllocation, "past the cap cudaMalloc fails with cudaErrorMemoryAllocation");
  check(cudaGetLastError() == cudaErrorMemoryAllocation, "and the runtime recorded it (cudaGetLastError)");
  check(cudaGetLastError() == cudaSuccess, "which cudaGetLastError then cleared");
  check(blocks.size() >= 6 && blocks.size() * kBlock <= kCap, "between 6 and 8 blocks fit under a 1 GiB cap");
  check(report.find("out of memory on device") != std::string::npos, "gpushim printed its out-of-memory report");
  check(cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess && free_bytes < kBlock,
        "cudaMemGetInfo shows less than one block free at the cap");

  // The stream-ordered pair at the cap: the same errors, recorded the same way. The stream carries no
  // work, so the frees below stay unfenced.
  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) return 2;
  void* refused = nullptr;
  cudaError_t async_result = cudaSuccess;
  capture_stderr([&] { async_result = cudaMallocAsync(&refused, kBlock, stream); });
  check(async_result == cudaErrorMemoryAllocation, "past the cap cudaMallocAsync fails with cudaErrorMemoryAllocation");
  check(cudaGetLastError() == cudaErrorMemoryAllocation, "and the runtime recorded it (cudaGetLastError)");

  // Recovery: free one block, allocate again, use it.
  if (!blocks.empty()) {
    check(cudaFree(static_cast<char*>(blocks.back()) + 512) == cudaErrorInvalidValue,
          "cudaFree of a pointer inside a block fails with cudaErrorInvalidValue");
    check(cudaGetLastError() == cudaErrorInvalidValue, "and the runtime recorded it (cudaGetLastError)");
    check(cudaFreeAsync(static_cast<char*>(blocks.back()) + 512, stream) == cudaErrorInvalidValue,
          "cudaFreeAsync of a pointer inside a block fails with cudaErrorInvalidValue");
    check(cudaGetLastError() == cudaErrorInvalidValue, "and the runtime recorded it (cudaGetLastError)");
    check(cudaFree(blocks.back()) == cudaSuccess, "cudaFree at the cap");
    blocks.pop_back();
    cudaDeviceSynchronize();  // a fenced free becomes reusable once the GPU has passed it
    void* p = nullptr;
    check(cudaMalloc(&p, kBlock) == cudaSuccess, "after a free, cudaMalloc succeeds again");
    if (p) {
      blocks.push_back(p);
      check(cudaMemset(p, 0x5a, kBlock) == cudaSuccess, "the new block is writable");
      unsigned char tail[256];
      check(cudaMemcpy(tail, static_cast<char*>(p) + kBlock - sizeof tail, sizeof tail,
                       cudaMemcpyDeviceToHost) == cudaSuccess && tail[0] == 0x5a && tail[255] == 0x5a,
            "and reads back what was written, to its last byte");
    }
  }
  for (void* p : blocks) cudaFree(p);
  // A stream-ordered pair on stream 0: the legacy stream, or in limit_check_ptsz (built with
  // --default-stream per-thread, so its calls are the runtime's _ptsz forms) this thread's own stream.
  void* q = nullptr;
  unsigned char back[256] = {};
  check(cudaMallocAsync(&q, 256, 0) == cudaSuccess && cudaMemsetAsync(q, 0x3c, 256, 0) == cudaSuccess &&
            cudaMemcpyAsync(back, q, sizeof back, cudaMemcpyDeviceToHost, 0) == cudaSuccess &&
            cudaFreeAsync(q, 0) == cudaSuccess && cudaStreamSynchronize(0) == cudaSuccess && back[0] == 0x3c &&
            back[255] == 0x3c,
        "a cudaMallocAsync block on stream 0 holds what was written, up to its cudaFreeAsync");
  cudaStreamDestroy(stream);
  cudaDeviceSynchronize();
  check(cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess && free_bytes >= kCap - 64 * kMiB,
        "after freeing everything, cached memory counts as free again");
  std::printf("limit_check: %s\n", failures == 0 ? "PASS" : "FAIL");
  return failures == 0 ? 0 : 1;
}
