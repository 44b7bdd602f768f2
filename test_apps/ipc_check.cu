// Two-process CUDA IPC: the parent (exporter) writes a pattern into each block, passes its IPC handle
// to a child it execs (the importer), the child verifies the pattern and writes another, and the
// parent verifies that. Knows nothing of gpushim: it must pass on the plain driver too.
//
//   ipc_check                     exporter; the importer inherits the environment (LD_PRELOAD included)
//   ipc_check --plain-importer    the importer runs without LD_PRELOAD: opening must either fail with
//                                 the driver's error or give the right bytes, never a wrong address
//   ipc_check --free-while-imported  the exporter frees each block while the importer has it open and
//                                 allocates and fills new blocks of the same size: the importer's bytes
//                                 must stay untouched. cuda.h calls this free undefined behaviour for
//                                 cuMemAlloc memory; gpushim defines it (the block is kept until the
//                                 importer closes), so this mode is for gpushim's own blocks only.
// Exit 0 = pass. The child modes (--import, --import-plain, --import-held) are internal.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <cuda_runtime.h>

#include "kernels/pattern_kernels.h"

namespace {

#define CHECK(call)                                                                            \
  do {                                                                                         \
    cudaError_t status_ = (call);                                                              \
    if (status_ != cudaSuccess) {                                                              \
      std::fprintf(stderr, "ipc_check: %s failed: %s\n", #call, cudaGetErrorString(status_)); \
      return 1;                                                                                \
    }                                                                                          \
  } while (0)

std::string to_hex(const cudaIpcMemHandle_t& handle) {
  static const char digits[] = "0123456789abcdef";
  std::string text;
  for (unsigned char byte : handle.reserved) {
    text += digits[byte >> 4];
    text += digits[byte & 15];
  }
  return text;
}

bool from_hex(const char* text, cudaIpcMemHandle_t* handle) {
  if (std::strlen(text) != 2 * sizeof handle->reserved) return false;
  for (size_t i = 0; i < sizeof handle->reserved; ++i) {
    unsigned value = 0;
    if (std::sscanf(text + 2 * i, "%2x", &value) != 1) return false;
    handle->reserved[i] = static_cast<char>(value);
  }
  return true;
}

int count_mismatches(const void* block, size_t bytes, unsigned tag, unsigned long long* counter,
                     unsigned long long* result) {
  CHECK(cudaMemset(counter, 0, sizeof *counter));
  CHECK(gpushim::kernels::verify_pattern(block, bytes, tag, counter, nullptr));
  CHECK(cudaMemcpy(result, counter, sizeof *result, cudaMemcpyDeviceToHost));
  return 0;
}

// The importer: opens, verifies, writes the next pattern back, closes. plain: opening may fail (the
// exporter's allocator is unknown to this process). With pipe ends (--import-held), it tells the
// exporter once it has verified (to_parent) and waits while the exporter frees and reallocates
// (from_parent), then verifies again: the bytes must not have changed.
int import_main(const char* hex, size_t bytes, unsigned tag, bool plain, int from_parent = -1, int to_parent = -1) {
  cudaIpcMemHandle_t handle;
  if (!from_hex(hex, &handle)) return 2;
  CHECK(cudaFree(nullptr));
  void* block = nullptr;
  cudaError_t opened = cudaIpcOpenMemHandle(&block, handle, cudaIpcMemLazyEnablePeerAccess);
  if (opened != cudaSuccess) {
    if (plain) {
      std::printf("ipc_check: importer without the exporter's allocator: open refused (%s), as allowed\n",
                  cudaGetErrorName(opened));
      return 0;
    }
    std::fprintf(stderr, "ipc_check: cudaIpcOpenMemHandle failed: %s\n", cudaGetErrorString(opened));
    return 1;
  }
  unsigned long long* counter = nullptr;
  unsigned long long before = 0, after = 0;
  CHECK(cudaMalloc(&counter, sizeof *counter));
  if (count_mismatches(block, bytes, tag, counter, &before) != 0) return 1;
  if (to_parent >= 0) {
    char go = 0;
    if (write(to_parent, "o", 1) != 1 || read(from_parent, &go, 1) != 1) return 3;
    if (count_mismatches(block, bytes, tag, counter, &after) != 0) return 1;
  }
  if (before != 0 || after != 0) {
    std::fprintf(stderr, "ipc_check: importer sees %llu mismatching words in a %zu-byte block%s%llu after\n", before,
                 bytes, to_parent >= 0 ? " before the exporter's free, " : "; ", after);
    return 1;
  }
  CHECK(gpushim::kernels::fill_pattern(block, bytes, tag + 1, nullptr));
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaIpcCloseMemHandle(block));
  CHECK(cudaFree(counter));
  return 0;
}

int wait_for(pid_t child) {
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) return 1;
  return WEXITSTATUS(status);
}

int run_importer(const std::string& hex, size_t bytes, unsigned tag, bool plain) {
  const std::string size_text = std::to_string(bytes), tag_text = std::to_string(tag);
  const pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    if (plain) unsetenv("LD_PRELOAD");
    const char* mode = plain ? "--import-plain" : "--import";
    execl("/proc/self/exe", "ipc_check", mode, hex.c_str(), size_text.c_str(), tag_text.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  return wait_for(child);
}

// The exporter of --free-while-imported, for one size. 0 = pass.
int free_while_imported(size_t bytes, unsigned tag) {
  void* block = nullptr;
  CHECK(cudaMalloc(&block, bytes));
  CHECK(gpushim::kernels::fill_pattern(block, bytes, tag, nullptr));
  CHECK(cudaDeviceSynchronize());
  cudaIpcMemHandle_t handle;
  CHECK(cudaIpcGetMemHandle(&handle, block));
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) return 1;
  const std::string size_text = std::to_string(bytes), tag_text = std::to_string(tag);
  const std::string read_fd = std::to_string(to_child[0]), write_fd = std::to_string(from_child[1]);
  const pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    close(to_child[1]);  // so that the importer sees end-of-file if the exporter dies
    close(from_child[0]);
    execl("/proc/self/exe", "ipc_check", "--import-held", to_hex(handle).c_str(), size_text.c_str(),
          tag_text.c_str(), read_fd.c_str(), write_fd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(to_child[0]);
  close(from_child[1]);
  char opened = 0;
  const bool child_opened = read(from_child[0], &opened, 1) == 1;
  // Free the open block, then allocate and overwrite as much again: none of it may be the open block.
  CHECK(cudaFree(block));
  std::vector<void*> fresh(4, nullptr);
  for (void*& p : fresh) {
    CHECK(cudaMalloc(&p, bytes));
    CHECK(gpushim::kernels::fill_pattern(p, bytes, tag + 10, nullptr));
  }
  CHECK(cudaDeviceSynchronize());
  if (child_opened && write(to_child[1], "g", 1) != 1) return 1;
  close(to_child[1]);
  close(from_child[0]);
  const int status = wait_for(child);
  for (void* p : fresh) CHECK(cudaFree(p));
  std::printf("ipc_check: %zu bytes freed while imported: %s\n", bytes, status == 0 && child_opened ? "ok" : "FAILED");
  return status == 0 && child_opened ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && (std::strcmp(argv[1], "--import") == 0 || std::strcmp(argv[1], "--import-plain") == 0)) {
    return import_main(argv[2], std::strtoull(argv[3], nullptr, 10), static_cast<unsigned>(std::atoi(argv[4])),
                       std::strcmp(argv[1], "--import-plain") == 0);
  }
  if (argc == 7 && std::strcmp(argv[1], "--import-held") == 0) {
    return import_main(argv[2], std::strtoull(argv[3], nullptr, 10), static_cast<unsigned>(std::atoi(argv[4])),
                       false, std::atoi(argv[5]), std::atoi(argv[6]));
  }
  const bool plain = argc > 1 && std::strcmp(argv[1], "--plain-importer") == 0;
  if (argc > 1 && std::strcmp(argv[1], "--free-while-imported") == 0) {
    CHECK(cudaFree(nullptr));
    int failures = 0;
    unsigned tag = 300;
    for (size_t bytes : {size_t{4000}, (size_t{3} << 20) + 5}) {
      failures += free_while_imported(bytes, tag);
      tag += 20;
    }
    std::printf("ipc_check: %s\n", failures == 0 ? "PASS" : "FAIL");
    return failures == 0 ? 0 : 1;
  }

  CHECK(cudaFree(nullptr));
  unsigned long long* counter = nullptr;
  CHECK(cudaMalloc(&counter, sizeof *counter));
  // A small block first, so that under a pooling allocator the exported blocks do not start at the
  // beginning of their physical chunk: the importer must land on the block, not on the chunk.
  void* padding = nullptr;
  CHECK(cudaMalloc(&padding, 1000));

  const size_t sizes[] = {4000, (size_t{3} << 20) + 5, 256, size_t{64} << 20};
  unsigned tag = 100;
  int failures = 0;
  for (size_t bytes : sizes) {
    void* block = nullptr;
    CHECK(cudaMalloc(&block, bytes));
    CHECK(gpushim::kernels::fill_pattern(block, bytes, tag, nullptr));
    CHECK(cudaDeviceSynchronize());
    cudaIpcMemHandle_t handle;
    CHECK(cudaIpcGetMemHandle(&handle, block));
    const int child = run_importer(to_hex(handle), bytes, tag, plain);
    unsigned long long mismatches = 0;
    if (count_mismatches(block, bytes, plain ? tag : tag + 1, counter, &mismatches) != 0) return 1;
    // A plain importer that refused leaves the first pattern; one that opened wrote the second.
    if (plain && mismatches != 0 && count_mismatches(block, bytes, tag + 1, counter, &mismatches) != 0) return 1;
    const bool ok = child == 0 && mismatches == 0;
    std::printf("ipc_check: %zu bytes at offset %zu: %s\n", bytes,
                static_cast<size_t>(reinterpret_cast<uintptr_t>(block) & ((size_t{2} << 20) - 1)),
                ok ? "ok" : "FAILED");
    if (!ok) {
      std::fprintf(stderr, "ipc_check: importer exit %d, exporter sees %llu mismatching words\n", child, mismatches);
      ++failures;
    }
    CHECK(cudaFree(block));
    tag += 2;
  }
  CHECK(cudaFree(padding));
  CHECK(cudaFree(counter));
  std::printf("ipc_check: %s\n", failures == 0 ? "PASS" : "FAIL");
  return failures == 0 ? 0 : 1;
}
