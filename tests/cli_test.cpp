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
#include <vector>

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

// The cells of one Markdown table line: split at '|' that are not escaped, "\\|" read back as '|'.
std::vector<std::string> markdown_cells(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  for (std::size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\\' && i + 1 < line.size() && line[i + 1] == '|') {
      cell += '|';
      ++i;
    } else if (line[i] == '|') {
      cells.push_back(cell);
      cell.clear();
    } else {
      cell += line[i];
    }
  }
  cells.push_back(cell);
  // "| a | b |" -> "", " a ", " b ", "": drop the outer empties, trim one space each side
  if (cells.size() >= 2) cells = std::vector<std::string>(cells.begin() + 1, cells.end() - 1);
  for (std::string& c : cells) {
    if (!c.empty() && c.front() == ' ') c.erase(0, 1);
    if (!c.empty() && c.back() == ' ') c.pop_back();
  }
  return cells;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    const std::size_t end = text.find('\n', start);
    lines.push_back(text.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return lines;
}

// Every field of every row, in table order, read back from the Markdown (not compared with the
// function that wrote it): a wrong, missing or shifted cell fails.
TEST_F(Cli, SettingsMarkdownShowsEveryFieldOfEveryRow) {
  const Result r = shell(gpushim() + " settings --markdown");
  EXPECT_EQ(r.status, 0);
  const std::vector<std::string> lines = lines_of(r.out);
  const auto& rows = gpushim::setting_rows();
  ASSERT_EQ(lines.size(), rows.size() + 2) << r.out;
  EXPECT_EQ(markdown_cells(lines[0]), (std::vector<std::string>{"Variable", "Type", "Default", "Accepted", "Meaning"}));
  EXPECT_EQ(markdown_cells(lines[1]), (std::vector<std::string>{"---", "---", "---", "---", "---"}));
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const gpushim::SettingRow& row = rows[i];
    const std::string shown_default = *row.default_value ? row.default_value : "(unset)";
    EXPECT_EQ(markdown_cells(lines[i + 2]),
              (std::vector<std::string>{std::string("`") + row.variable + "`", row.type, "`" + shown_default + "`",
                                        row.accepted, row.help}))
        << lines[i + 2];
  }
}

// The tables users read (README.md, docs/configuration.md) are the command's output, row for row.
TEST_F(Cli, ReadmeAndConfigurationDocShowTheSettingsTable) {
  const Result r = shell(gpushim() + " settings --markdown");
  ASSERT_EQ(r.status, 0);
  const std::vector<std::string> expected = lines_of(r.out);
  for (const char* doc : {GPUSHIM_SOURCE_DIR "/README.md", GPUSHIM_SOURCE_DIR "/docs/configuration.md"}) {
    std::ifstream in(doc);
    ASSERT_TRUE(in) << doc;
    std::vector<std::string> table;
    for (std::string line; std::getline(in, line);) {
      if (line == expected.front()) table.clear();  // the header starts the table
      if (!table.empty() || line == expected.front()) {
        if (line.empty() || line[0] != '|') break;
        table.push_back(line);
      }
    }
    EXPECT_EQ(table, expected) << doc << " differs from `gpushim settings --markdown`: paste its output";
  }
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
