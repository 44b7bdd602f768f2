// A program that knows nothing of CUDA, run by shim_without_driver_test with libgpushim.so preloaded
// and no libcuda.so.1 anywhere. It prints a fixed transcript; the test compares it byte for byte.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

using ProcAddressV2 = int (*)(const char*, void**, int, unsigned long long, int*);
using MemAlloc = int (*)(unsigned long long*, size_t);

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "child") == 0) {
    std::printf("child ran\n");
    return 0;
  }
  if (dlopen("libcuda.so.1", RTLD_LAZY) != nullptr) {
    std::printf("driver present\n");  // the test skips: this machine has a driver after all
    return 0;
  }
  std::printf("plain program\n");
  // The exports are there (gpushim is preloaded), and answer as a driver that cannot initialise.
  auto get_proc = reinterpret_cast<ProcAddressV2>(dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2"));
  auto alloc = reinterpret_cast<MemAlloc>(dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"));
  if (get_proc == nullptr || alloc == nullptr) {
    std::printf("exports missing\n");
    return 1;
  }
  void* function = nullptr;
  int status = 0;
  std::printf("cuGetProcAddress_v2 -> %d\n", get_proc("cuMemAlloc", &function, 3020, 0, &status));
  unsigned long long pointer = 0;
  std::printf("cuMemAlloc_v2 -> %d\n", alloc(&pointer, 256));
  std::fflush(stdout);
  // A program that forks and execs keeps working (the child inherits LD_PRELOAD).
  const pid_t child = fork();
  if (child == 0) {
    execl("/proc/self/exe", argv[0], "child", static_cast<char*>(nullptr));
    _exit(127);
  }
  int wait_status = 0;
  waitpid(child, &wait_status, 0);
  std::printf("child exit %d\n", WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1);
  return 0;
}
