// GPUSHIM_FAIL and GPUSHIM_OOM_DUMP in the real libgpushim.so over the fake driver. Both are read once
// per process, so each case runs this program again as a child (/proc/self/exe, the same LD_PRELOAD)
// with its own environment: the child makes the allocations E2E_CHILD_SIZES lists and prints their
// result codes; the parent checks them, the child's stderr (report, exit statistics) and the dump file.
#include <cuda.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#ifdef GPUSHIM_HAVE_TRACE_TOOLS
#include "analysis/trace_reader.h"
#include "analysis/trace_tool_commands.h"
#endif

extern char** environ;

namespace {

constexpr std::size_t MiB = 1024 * 1024;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct ChildRun {
  int status = -1;
  std::string out, err;
  int pid = 0;
};

// Runs the child case with `extra` NAME=VALUE entries on top of this process's environment.
ChildRun run_child(const std::vector<std::string>& extra) {
  char dir_pattern[] = "/tmp/gpushim_oom_e2e_XXXXXX";
  const std::string dir = mkdtemp(dir_pattern) ? dir_pattern : "/tmp";
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    bool replaced = false;
    for (const std::string& x : extra)
      if (std::strncmp(*e, x.c_str(), x.find('=') + 1) == 0) replaced = true;
    if (!replaced) env.emplace_back(*e);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  env.emplace_back("E2E_CHILD=1");
  std::vector<char*> envp;
  for (std::string& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string filter = "--gtest_filter=OomChild.Body";
  char exe[] = "/proc/self/exe";
  char* argv[] = {exe, filter.data(), nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, (dir + "/out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, (dir + "/err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ChildRun run;
  pid_t pid = 0;
  if (posix_spawn(&pid, exe, &actions, nullptr, argv, envp.data()) == 0) waitpid(pid, &run.status, 0);
  posix_spawn_file_actions_destroy(&actions);
  run.pid = pid;
  run.out = read_file(dir + "/out");
  run.err = read_file(dir + "/err");
  return run;
}

// The result codes the child printed: "results: 0 2 0".
std::vector<int> results_of(const ChildRun& run) {
  std::vector<int> codes;
  const std::size_t at = run.out.find("results:");
  if (at == std::string::npos) return codes;
  std::istringstream line(run.out.substr(at + 8, run.out.find('\n', at) - at - 8));
  for (int code; line >> code;) codes.push_back(code);
  return codes;
}

std::string sizes(const std::vector<std::size_t>& list) {
  std::string text = "E2E_CHILD_SIZES=";
  for (std::size_t s : list) text += std::to_string(s) + ",";
  return text;
}

constexpr int kOom = CUDA_ERROR_OUT_OF_MEMORY;

// The child: allocates each size of E2E_CHILD_SIZES in turn, keeping what it gets (E2E_CHILD_FREE=1:
// freeing each block at once), prints the codes, and exits normally so the exit statistics print.
TEST(OomChild, Body) {
  if (!std::getenv("E2E_CHILD")) GTEST_SKIP() << "the child case; the tests below run it";
  ASSERT_EQ(cuInit(0), CUDA_SUCCESS);  // the fake driver makes device 0's context current
  const bool free_at_once = std::getenv("E2E_CHILD_FREE") != nullptr;
  std::string text = std::getenv("E2E_CHILD_SIZES") ? std::getenv("E2E_CHILD_SIZES") : "";
  std::printf("results:");
  for (std::size_t at = 0; at < text.size();) {
    std::size_t comma = text.find(',', at);
    if (comma == std::string::npos) comma = text.size();
    const std::size_t bytes = std::strtoull(text.substr(at, comma - at).c_str(), nullptr, 10);
    at = comma + 1;
    CUdeviceptr p = 0;
    const CUresult rc = cuMemAlloc(&p, bytes);
    std::printf(" %d", int(rc));
    if (rc == CUDA_SUCCESS && free_at_once) cuMemFree(p);
  }
  std::printf("\n");
  std::fflush(stdout);
}

bool is_child() { return std::getenv("E2E_CHILD") != nullptr; }

TEST(GpushimFail, NthFailsThatAllocationOnlyAndTheProgramGoesOn) {
  if (is_child()) GTEST_SKIP();
  const ChildRun run = run_child({"GPUSHIM_FAIL=nth=3", "GPUSHIM_STATS=1", sizes({MiB, MiB, MiB, MiB, MiB})});
  EXPECT_EQ(results_of(run), (std::vector<int>{0, 0, kOom, 0, 0})) << run.out << run.err;
  EXPECT_NE(run.err.find("requested 1.00 MiB (injected by GPUSHIM_FAIL)"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("GPUSHIM_FAIL injected 1 of the failed allocations"), std::string::npos) << run.err;
  // The stats table counts it as a failure: allocs 4, failed 1.
  EXPECT_NE(run.err.find(" 4 "), std::string::npos) << run.err;
}

TEST(GpushimFail, EveryAndSizeNarrowWhichAllocationsMatch) {
  if (is_child()) GTEST_SKIP();
  // Small blocks never match size>=1MiB and are not counted; of the big ones every 2nd fails.
  const ChildRun run = run_child({"GPUSHIM_FAIL=size>=1MiB,every=2", "E2E_CHILD_FREE=1",
                                  sizes({4096, MiB, 4096, 2 * MiB, MiB, 4096, 4 * MiB})});
  EXPECT_EQ(results_of(run), (std::vector<int>{0, 0, 0, kOom, 0, 0, kOom})) << run.out << run.err;
}

TEST(GpushimFail, AfterWaitsForItsTime) {
  if (is_child()) GTEST_SKIP();
  const ChildRun later = run_child({"GPUSHIM_FAIL=after=1h", sizes({MiB, MiB})});
  EXPECT_EQ(results_of(later), (std::vector<int>{0, 0})) << later.err;
  const ChildRun now = run_child({"GPUSHIM_FAIL=after=0s", sizes({MiB, MiB})});
  EXPECT_EQ(results_of(now), (std::vector<int>{kOom, kOom})) << now.err;
}

TEST(GpushimFail, BadValueIsOneLineAndRunsOnPassthrough) {
  if (is_child()) GTEST_SKIP();
  for (const char* bad : {"nth=0", "nth=2,every=3", "size>=lots", "sometimes", "after=5parsecs", "nth=1,"}) {
    const ChildRun run = run_child({std::string("GPUSHIM_FAIL=") + bad, sizes({MiB})});
    EXPECT_EQ(results_of(run), (std::vector<int>{0})) << bad << ": " << run.err;
    const std::string line = std::string("gpushim: GPUSHIM_FAIL=") + bad + " is not valid; accepted: ";
    EXPECT_NE(run.err.find(line), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("Using passthrough."), std::string::npos) << run.err;
  }
}

#ifdef GPUSHIM_HAVE_TRACE_TOOLS
using gpushim::tracing::EventKind;

// Under GPUSHIM_LIMIT: the first failure writes the dump, and its blocks are exactly the live ones.
TEST(OomDump, FirstFailureUnderTheLimitWritesTheLiveBlocks) {
  if (is_child()) GTEST_SKIP();
  char dir_pattern[] = "/tmp/gpushim_oom_dump_XXXXXX";
  ASSERT_NE(mkdtemp(dir_pattern), nullptr);
  const std::string pattern = std::string(dir_pattern) + "/dump.%p";
  // 256 MiB: seven 32 MiB blocks fit whatever the backend rounds, the 9th cannot; then two more tries.
  std::vector<std::size_t> list(11, 32 * MiB);
  const ChildRun run = run_child({"GPUSHIM_LIMIT=256MiB", "GPUSHIM_OOM_DUMP=" + pattern, "GPUSHIM_OOM_DUMP_STACK=8",
                                  sizes(list)});
  const std::vector<int> codes = results_of(run);
  ASSERT_EQ(codes.size(), list.size()) << run.out << run.err;
  std::size_t served = 0;
  while (served < codes.size() && codes[served] == 0) ++served;
  ASSERT_GE(served, 4u) << run.err;
  ASSERT_LT(served, codes.size()) << "the limit never bit";
  for (std::size_t i = served; i < codes.size(); ++i) EXPECT_EQ(codes[i], kOom);
  const std::string path = std::string(dir_pattern) + "/dump." + std::to_string(run.pid);
  EXPECT_NE(run.err.find("out-of-memory dump: " + std::to_string(served) + " live blocks written to " + path),
            std::string::npos) << run.err;

  gpushim::tracing::Trace trace;
  gpushim::tracing::TraceError error;
  ASSERT_TRUE(gpushim::tracing::read_trace(path, &trace, &error)) << error.message;
  EXPECT_TRUE(trace.is_oom_dump());
  EXPECT_TRUE(trace.clean_end);
  ASSERT_EQ(trace.device_states.size(), 1u);
  EXPECT_EQ(trace.device_states[0].limit, 256 * MiB);
  EXPECT_EQ(trace.device_states[0].failed_request, 32 * MiB);
  EXPECT_EQ(trace.device_states[0].live_blocks, served);
  EXPECT_EQ(trace.device_states[0].live_bytes, served * 32 * MiB);
  std::size_t blocks = 0, failures = 0;
  for (const auto& e : trace.events) {
    if (e.kind == EventKind::alloc) {
      ++blocks;
      EXPECT_EQ(e.size, 32 * MiB);
      EXPECT_NE(e.address, 0u);
    }
    if (e.kind == EventKind::out_of_memory) {
      ++failures;
      EXPECT_EQ(e.size, 32 * MiB);
      EXPECT_EQ(&e, &trace.events.back()) << "the failing request comes last";
    }
  }
  EXPECT_EQ(blocks, served);
  EXPECT_EQ(failures, 1u) << "only the first failure writes";
  if (trace.header.stack_depth > 0) {  // libunwind present: the blocks carry their stacks
    for (const auto& e : trace.events) EXPECT_GT(e.frame_count, 0);
  } else {
    EXPECT_NE(trace.header.flags & gpushim::tracing::format::kFlagNoUnwinder, 0u);
  }
  std::ostringstream out, err;
  ASSERT_EQ(gpushim::tracing::run_trace_summary(path, 5, {out, err, false}), 0) << err.str();
  EXPECT_NE(out.str().find("out-of-memory dump: device 0"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("could not allocate 32.00 MiB"), std::string::npos) << out.str();
}

// An injected failure takes the same path: the dump is written, with what was live at that moment.
TEST(OomDump, InjectedFailureWritesTheDumpToo) {
  if (is_child()) GTEST_SKIP();
  char dir_pattern[] = "/tmp/gpushim_oom_dump_XXXXXX";
  ASSERT_NE(mkdtemp(dir_pattern), nullptr);
  const std::string path = std::string(dir_pattern) + "/dump";
  const ChildRun run = run_child({"GPUSHIM_FAIL=nth=3", "GPUSHIM_OOM_DUMP=" + path, sizes({MiB, 2 * MiB, 3 * MiB})});
  EXPECT_EQ(results_of(run), (std::vector<int>{0, 0, kOom})) << run.err;
  gpushim::tracing::Trace trace;
  gpushim::tracing::TraceError error;
  ASSERT_TRUE(gpushim::tracing::read_trace(path, &trace, &error)) << error.message << run.err;
  ASSERT_EQ(trace.events.size(), 3u);
  EXPECT_EQ(trace.events[0].size + trace.events[1].size, 3 * MiB);
  EXPECT_EQ(trace.events[2].kind, EventKind::out_of_memory);
  EXPECT_EQ(trace.events[2].size, 3 * MiB);
  EXPECT_EQ(trace.header.stack_depth, 0u) << "no stacks unless GPUSHIM_OOM_DUMP_STACK asks";
}
#endif

// A dump that cannot be written is one line; the program gets its CUDA_ERROR_OUT_OF_MEMORY and goes on.
TEST(OomDump, UnwritablePathIsOneLineAndTheProgramGoesOn) {
  if (is_child()) GTEST_SKIP();
  const ChildRun run = run_child({"GPUSHIM_FAIL=nth=2", "GPUSHIM_OOM_DUMP=/nonexistent-gpushim-dir/oom.dump",
                                  sizes({MiB, MiB, MiB})});
  EXPECT_EQ(results_of(run), (std::vector<int>{0, kOom, 0})) << run.err;
  EXPECT_NE(run.err.find("GPUSHIM_OOM_DUMP: cannot write /nonexistent-gpushim-dir/oom.dump (No such file or directory); no dump"),
            std::string::npos) << run.err;
}

}  // namespace
