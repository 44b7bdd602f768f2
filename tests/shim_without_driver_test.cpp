// libgpushim.so in a process without any CUDA driver (CI): it loads, changes nothing, prints nothing,
// its exports answer CUDA_ERROR_NOT_INITIALIZED, and fork/exec works. The program runs in a child with
// a clean environment so the preload and library path are exactly what the test says.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

extern char** environ;

namespace {

std::string read_all(int fd) {
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<size_t>(n));
  return text;
}

struct Outcome {
  int exit_code = -1;
  std::string out, err;
};

// SHIM_TEST_LIBRARY: the library to preload (tests/shim.cmake runs this test once per variant).
Outcome run_preloaded(const char* program) {
  int out_pipe[2], err_pipe[2];
  Outcome outcome;
  const char* library = std::getenv("SHIM_TEST_LIBRARY");
  if (library == nullptr) return outcome;
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) return outcome;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addclose(&actions, out_pipe[0]);
  posix_spawn_file_actions_addclose(&actions, err_pipe[0]);
  std::string preload = std::string("LD_PRELOAD=") + library;
  std::string library_path = "LD_LIBRARY_PATH=/nonexistent-gpushim-test";
  char* env[] = {preload.data(), library_path.data(), nullptr};
  char* argv[] = {const_cast<char*>(program), nullptr};
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, program, &actions, nullptr, argv, env);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (spawned == 0) {
    outcome.out = read_all(out_pipe[0]);  // the pipes are small and the program writes little
    outcome.err = read_all(err_pipe[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  close(out_pipe[0]);
  close(err_pipe[0]);
  return outcome;
}

TEST(WithoutDriver, ProgramRunsUnchangedAndNothingIsPrinted) {
  ASSERT_NE(std::getenv("SHIM_TEST_LIBRARY"), nullptr) << "run through ctest";
  const Outcome outcome = run_preloaded(PLAIN_PROGRAM);
  if (outcome.out == "driver present\n") GTEST_SKIP() << "a libcuda.so.1 is installed on this machine";
  EXPECT_EQ(outcome.exit_code, 0);
  EXPECT_EQ(outcome.err, "");
  EXPECT_EQ(outcome.out,
            "plain program\n"
            "cuGetProcAddress_v2 -> 3\n"  // CUDA_ERROR_NOT_INITIALIZED
            "cuMemAlloc_v2 -> 3\n"
            "child ran\n"
            "child exit 0\n");
}

}  // namespace
