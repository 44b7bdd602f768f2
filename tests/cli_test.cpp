// The `gpushim` command as users run it. The binary is copied into a fresh prefix (bin/gpushim with a
// stand-in lib/libgpushim.so), so the test does not need the CUDA-built library: it checks what
// `gpushim run` hands to the program (variables, LD_PRELOAD), not what the library then does.
#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "allocators/backend_registry.h"
#include "config/settings.h"

namespace {

struct Result {
  int status;
  std::string out;
};

Result shell(const std::string& command) {
  Result result{-1, {}};
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.out.append(buffer, n);
  const int status = ::pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/gpushim_cli_test.XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    prefix_ = pattern;
    ASSERT_EQ(shell("mkdir -p " + prefix_ + "/bin " + prefix_ + "/lib && cp '" GPUSHIM_CLI_PATH "' " + prefix_ +
                    "/bin/gpushim && : > " + prefix_ + "/lib/libgpushim.so")
                  .status,
              0);
  }
  static void TearDownTestSuite() { shell("rm -rf " + prefix_); }
  static std::string gpushim() { return prefix_ + "/bin/gpushim"; }
  static std::string library() { return prefix_ + "/lib/libgpushim.so"; }
  static std::string prefix_;
};
std::string Cli::prefix_;

bool has_line(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

TEST_F(Cli, RunSetsVariablesAndPrependsTheLibrary) {
  // ld.so complains on stderr about the stand-in library and the missing other one; stdout is env's.
  const Result r = shell("env -u GPUSHIM_BACKEND LD_PRELOAD=/nonexistent/other.so GPUSHIM_LOG=info " + gpushim() +
                         " run --backend vmm --stats --limit 80% --trace /tmp/t-%p.trace -- env 2>/dev/null");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(has_line(r.out, "GPUSHIM_BACKEND=vmm")) << r.out;
  EXPECT_TRUE(has_line(r.out, "GPUSHIM_STATS=1")) << r.out;
  EXPECT_TRUE(has_line(r.out, "GPUSHIM_LIMIT=80%")) << r.out;
  EXPECT_TRUE(has_line(r.out, "GPUSHIM_TRACE=/tmp/t-%p.trace")) << r.out;
  EXPECT_TRUE(has_line(r.out, "GPUSHIM_LOG=info")) << "variables not given as options are kept";
  EXPECT_TRUE(has_line(r.out, "LD_PRELOAD=" + library() + ":/nonexistent/other.so")) << r.out;
}

TEST_F(Cli, RunWithoutOptionsOnlySetsThePreload) {
  const Result r = shell("env -u LD_PRELOAD -u GPUSHIM_BACKEND -u GPUSHIM_STATS " + gpushim() +
                         " run -- env 2>/dev/null");
  ASSERT_EQ(r.status, 0);
  EXPECT_TRUE(has_line(r.out, "LD_PRELOAD=" + library())) << r.out;
  EXPECT_EQ(r.out.find("GPUSHIM_BACKEND="), std::string::npos);
  EXPECT_EQ(r.out.find("GPUSHIM_STATS="), std::string::npos);
}

TEST_F(Cli, CommandArgumentsPassThroughUntouched) {
  const Result r = shell(gpushim() + " run --backend slab -- sh -c 'echo \"$0|$1|$GPUSHIM_BACKEND\"' --stats -x 2>/dev/null");
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, "--stats|-x|slab\n");
  // without "--", the command starts at the first word that is not an option of run
  const Result plain = shell(gpushim() + " run sh -c 'echo \"$0 $1\"' --backend -- 2>/dev/null");
  EXPECT_EQ(plain.out, "--backend --\n");
}

TEST_F(Cli, ExitStatusOfTheCommandIsKept) {
  EXPECT_EQ(shell(gpushim() + " run -- sh -c 'exit 7' 2>/dev/null").status, 7);
  EXPECT_EQ(shell(gpushim() + " run -- /nonexistent/program 2>/dev/null").status, 127);
}

TEST_F(Cli, RejectsBadOptionsBeforeRunning) {
  EXPECT_NE(shell(gpushim() + " run --backend foo -- true 2>&1").status, 0);
  const Result limit = shell(gpushim() + " run --limit 12x -- echo ran 2>&1");
  EXPECT_NE(limit.status, 0);
  EXPECT_EQ(limit.out.find("ran"), std::string::npos);
  EXPECT_EQ(shell(gpushim() + " run 2>&1").status, 2) << "no command";
}

TEST_F(Cli, MissingLibraryIsAClearError) {
  const std::string lonely = prefix_ + "/lonely/bin";  // no library beside it, none in lonely/lib
  ASSERT_EQ(shell("mkdir -p " + lonely + " && cp " + gpushim() + " " + lonely + "/gpushim").status, 0);
  const Result r = shell(lonely + "/gpushim run -- true 2>&1");
  // A build tree with the real library is found through the path the build recorded; otherwise: error.
  if (r.status == 0) GTEST_SKIP() << "the build-tree libgpushim.so exists, so nothing is missing";
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("libgpushim.so not found"), std::string::npos) << r.out;
}

TEST_F(Cli, HelpListsEveryVariable) {
  const Result r = shell(gpushim() + " --help");
  EXPECT_EQ(r.status, 0);
  for (const gpushim::SettingRow& row : gpushim::setting_rows()) {
    EXPECT_NE(r.out.find(row.variable), std::string::npos) << row.variable;
    EXPECT_NE(r.out.find(row.help), std::string::npos) << row.variable;
  }
  for (const char* subcommand : {"run", "backends", "settings", "trace"})
    EXPECT_NE(r.out.find(subcommand), std::string::npos) << subcommand;
}

TEST_F(Cli, SettingsMarkdownHasOneRowPerVariable) {
  const Result r = shell(gpushim() + " settings --markdown");
  EXPECT_EQ(r.status, 0);
  for (const gpushim::SettingRow& row : gpushim::setting_rows())
    EXPECT_NE(r.out.find(std::string("| `") + row.variable + "` |"), std::string::npos) << row.variable;
  std::size_t lines = 0;
  for (char c : r.out) lines += c == '\n';
  EXPECT_EQ(lines, gpushim::setting_rows().size() + 2);
}

TEST_F(Cli, BackendsListsEveryBackend) {
  const Result r = shell(gpushim() + " backends");
  EXPECT_EQ(r.status, 0);
  for (const char* name : {"tiered", "vmm", "buddy", "slab", "mempool", "passthrough"})
    EXPECT_TRUE(r.out.find(std::string("\n") + name + " ") != std::string::npos ||
                r.out.rfind(std::string(name) + " ", 0) == 0)
        << name;
  // the default backend's line says so
  const std::size_t line_start = r.out.find(std::string(gpushim::kDefaultBackend) + " ");
  ASSERT_NE(line_start, std::string::npos);
  const std::string line = r.out.substr(line_start, r.out.find('\n', line_start) - line_start);
  EXPECT_NE(line.find("default"), std::string::npos) << line;
}

}  // namespace
