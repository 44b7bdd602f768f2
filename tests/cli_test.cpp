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
 public:
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
  static std::string gpushim_path() { return gpushim(); }
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
  EXPECT_EQ(shell(gpushim() + " run --backend foo -- true 2>&1").status, 64);
  const Result limit = shell(gpushim() + " run --limit 12x -- echo ran 2>&1");
  EXPECT_EQ(limit.status, 64);
  EXPECT_EQ(limit.out.find("ran"), std::string::npos);
  EXPECT_EQ(shell(gpushim() + " run 2>&1").status, 64) << "no command";
  // An option run does not have is a typo, not the name of the program.
  const Result bogus = shell(gpushim() + " run --bogus -- echo ran 2>&1");
  EXPECT_EQ(bogus.status, 64);
  EXPECT_NE(bogus.out.find("unknown option '--bogus'"), std::string::npos) << bogus.out;
  EXPECT_EQ(bogus.out.find("ran"), std::string::npos);
}

// The copy in the test prefix has no build-tree fallback (only the build tree's own command has it),
// so a prefix without the library is what an installation that lacks it looks like.
TEST_F(Cli, MissingLibraryIsAClearError) {
  const std::string lonely = prefix_ + "/lonely/bin";  // no library beside it, none in lonely/lib
  ASSERT_EQ(shell("mkdir -p " + lonely + " && cp " + gpushim() + " " + lonely + "/gpushim").status, 0);
  const Result r = shell(lonely + "/gpushim run -- echo ran 2>&1");
  EXPECT_EQ(r.status, 125);
  EXPECT_NE(r.out.find("libgpushim.so not found"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(lonely + "/libgpushim.so"), std::string::npos) << "names where it looked: " << r.out;
  EXPECT_EQ(r.out.find("ran"), std::string::npos);
}

// The settings table is printed by `gpushim settings` alone; every other help is a few lines about
// its own subcommand.
TEST_F(Cli, SettingsListsEveryVariableAndHelpsStayShort) {
  const Result table = shell(gpushim() + " settings");
  EXPECT_EQ(table.status, 0);
  for (const gpushim::SettingRow& row : gpushim::setting_rows()) {
    EXPECT_NE(table.out.find(row.variable), std::string::npos) << row.variable;
    EXPECT_NE(table.out.find(row.help), std::string::npos) << row.variable;
  }
  const Result top = shell(gpushim() + " --help");
  EXPECT_EQ(top.status, 0);
  for (const char* subcommand : {"run", "check", "backends", "settings", "trace"})
    EXPECT_NE(top.out.find("  " + std::string(subcommand) + " "), std::string::npos) << subcommand;
  // A row's help text is a sentence only the table prints.
  const std::string table_only = gpushim::setting_rows().back().help;
  for (const char* help : {"--help", "run --help", "check --help", "backends --help", "settings --help",
                           "trace --help", "trace summary --help", "trace report --help", "trace export --help"}) {
    const Result r = shell(gpushim() + " " + help + " 2>&1");
    EXPECT_EQ(r.status, 0) << help;
    std::size_t lines = 0;
    for (char c : r.out) lines += c == '\n';
    EXPECT_LE(lines, 25u) << help << "\n" << r.out;
    EXPECT_EQ(r.out.find(table_only), std::string::npos) << help << " prints the settings table";
  }
}

// Usage errors, damaged input and the command's own status never share a code (README.md).
TEST_F(Cli, ExitCodesAreDistinct) {
  EXPECT_EQ(shell(gpushim() + " 2>&1").status, 64) << "nothing asked";
  const Result unknown = shell(gpushim() + " frobnicate 2>&1");
  EXPECT_EQ(unknown.status, 64);
  EXPECT_NE(unknown.out.find("unknown subcommand 'frobnicate'"), std::string::npos) << unknown.out;
  EXPECT_EQ(shell(gpushim() + " trace summary 2>&1").status, 64) << "missing file argument";
  EXPECT_EQ(shell(gpushim() + " trace summary --top x /dev/null 2>&1").status, 64);
  const Result lag = shell(gpushim() + " trace replay --gpu-lag-us -5 /dev/null 2>&1");
  EXPECT_EQ(lag.status, 64);
  EXPECT_TRUE(has_line(lag.out, "--gpu-lag-us: a whole number of microseconds, 0 to 18446744073709551615")) << lag.out;
  EXPECT_EQ(shell(gpushim() + " trace summary " GPUSHIM_TEST_DATA_DIR "/damaged_wrong_magic.trace 2>&1").status, 2);
  EXPECT_EQ(shell(gpushim() + " run -- sh -c 'exit 64' 2>&1").status, 64) << "the command's own status";
  EXPECT_EQ(shell(gpushim() + " run -- /nonexistent/program 2>&1").status, 127);
  EXPECT_EQ(shell(gpushim() + " run -- " + library() + " 2>&1").status, 126) << "not executable";
}

// `gpushim check` in an environment of exactly these variables (and PATH); stdout and stderr.
Result check_with(const std::string& variables, const std::string& prefix_command = "") {
  return shell("env -i PATH=/usr/bin:/bin " + variables + " " + prefix_command + Cli::gpushim_path() +
               " check 2>&1");
}

TEST_F(Cli, CheckPrintsEachVariableWithItsParsedValue) {
  const Result r = check_with("GPUSHIM_BACKEND=VMM GPUSHIM_LIMIT=512MiB GPUSHIM_STATS=Yes GPUSHIM_PLACEMENT=Spill");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("-> vmm"), std::string::npos) << "choices ignore case: " << r.out;
  EXPECT_NE(r.out.find("-> spill"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-> 536870912 bytes (512.00 MiB)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-> on"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ok: "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("GPUSHIM_VMM_RESERVE"), std::string::npos) << "unset rows only with --all";
  const Result all = shell("env -i PATH=/usr/bin:/bin " + gpushim() + " check --all");
  EXPECT_EQ(all.status, 0) << all.out;
  for (const gpushim::SettingRow& row : gpushim::setting_rows())
    EXPECT_NE(all.out.find(std::string(row.variable) + " "), std::string::npos) << row.variable;
}

TEST_F(Cli, CheckFailsOnEveryKindOfBadValue) {
  struct Case {
    const char* variables;
    const char* says;
  } cases[] = {
      {"GPUSHIM_BACKEND=fast", "ERROR: not valid; accepted: tiered, vmm"},
      {"GPUSHIM_PEERS=99999999999999999999999999", "ERROR: not valid; accepted: all, or device numbers 0 to 63"},
      {"GPUSHIM_PEERS=64", "ERROR: not valid"},
      {"GPUSHIM_TRACE=/tmp", "ERROR: /tmp is a directory"},
      {"GPUSHIM_TRACE=/dev/full", "ERROR: /dev/full is not a regular file"},
      {"GPUSHIM_TRACE=/nonexistent/folder/t.trace", "ERROR: folder /nonexistent/folder does not exist"},
      {"GPUSHIM_TRACE=/proc/t-%p.trace", "ERROR: cannot create a file in /proc"},
      {"GPUSHIM_TRACE_STACK=99", "ERROR: not valid; accepted: 0 to 64"},
  };
  for (const Case& c : cases) {
    const Result r = check_with(c.variables);
    EXPECT_EQ(r.status, 1) << c.variables << "\n" << r.out;
    EXPECT_NE(r.out.find(c.says), std::string::npos) << c.variables << "\n" << r.out;
    EXPECT_NE(r.out.find("1 error:"), std::string::npos) << r.out;
  }
  const Result writable = check_with("GPUSHIM_TRACE=" + prefix_ + "/run-%p.trace");
  EXPECT_EQ(writable.status, 0) << writable.out;
  EXPECT_EQ(shell("ls -A " + prefix_ + " | grep -c gpushim-check").out, "0\n") << "the probe file is removed";
}

TEST_F(Cli, CheckWarnsAboutUnknownVariablesWithoutFailing) {
  const Result r = check_with("GPUSHIM_BACKND=vmm");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("warning: not a gpushim setting; libgpushim.so ignores it (did you mean GPUSHIM_BACKEND?)"),
            std::string::npos)
      << r.out;
}

// Whether a device exists only the driver knows: with the fake libcuda (tests/fake_driver) reporting
// two devices, device 5 is an error and 0,1 are fine; without a driver only the range is checked.
TEST_F(Cli, CheckAsksTheDriverWhichDevicesExist) {
  const Result none = check_with("GPUSHIM_PEERS=0,5");
  EXPECT_EQ(none.status, 0) << none.out;
  EXPECT_NE(none.out.find("devices: no CUDA driver on this machine"), std::string::npos) << none.out;
#ifdef GPUSHIM_FAKE_DRIVER_DIR
  const std::string two_devices = "LD_LIBRARY_PATH=" GPUSHIM_FAKE_DRIVER_DIR " FAKE_CUDA_DEVICES=2 ";
  const Result missing = check_with(two_devices + "GPUSHIM_PEERS=0,5");
  EXPECT_EQ(missing.status, 1) << missing.out;
  EXPECT_NE(missing.out.find("ERROR: device 5 does not exist: the driver reports 2 devices (0-1)"), std::string::npos)
      << missing.out;
  const Result present = check_with(two_devices + "GPUSHIM_PEERS=0,1");
  EXPECT_EQ(present.status, 0) << present.out;
  EXPECT_NE(present.out.find("devices: the CUDA driver reports 2 devices"), std::string::npos) << present.out;
#else
  GTEST_SKIP() << "built without the CUDA headers: no fake libcuda to report devices";
#endif
}

// The library reads its settings at the first CUDA call, perhaps never; `gpushim run` says it first.
TEST_F(Cli, RunJudgesTheEnvironmentFirst) {
  const Result strict = shell("env -i PATH=/usr/bin:/bin GPUSHIM_STRICT=1 GPUSHIM_BACKEND=fast " + gpushim() +
                              " run -- echo ran 2>&1");
  EXPECT_EQ(strict.status, 125) << strict.out;
  EXPECT_EQ(strict.out.find("ran"), std::string::npos) << strict.out;
  EXPECT_NE(strict.out.find("GPUSHIM_BACKEND=fast: not valid"), std::string::npos) << strict.out;
  EXPECT_NE(strict.out.find("not starting echo: GPUSHIM_STRICT=1"), std::string::npos) << strict.out;

  const Result lenient = shell("env -i PATH=/usr/bin:/bin GPUSHIM_BACKEND=fast " + gpushim() +
                               " run -- echo ran 2>&1");
  EXPECT_EQ(lenient.status, 0) << lenient.out;
  EXPECT_NE(lenient.out.find("ran"), std::string::npos) << lenient.out;
  EXPECT_NE(lenient.out.find("the program will run on passthrough"), std::string::npos) << lenient.out;

  const Result quiet = shell("env -i PATH=/usr/bin:/bin GPUSHIM_LOG=quiet GPUSHIM_BACKEND=fast " + gpushim() +
                             " run -- echo ran 2>/dev/null");
  EXPECT_EQ(quiet.out, "ran\n");
  const Result strict_trace = shell("env -i PATH=/usr/bin:/bin GPUSHIM_STRICT=1 " + gpushim() +
                                    " run --trace /nonexistent/t.trace -- echo ran 2>&1");
  EXPECT_EQ(strict_trace.status, 125) << strict_trace.out;
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
