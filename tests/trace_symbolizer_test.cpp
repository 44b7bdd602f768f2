// Call sites named by function: the ELF symbol tables of the recorded modules (demangled), source lines
// where the module has a line table, the address where the module is missing, another build, or damaged.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <sstream>

#include "tests/trace_test_support.h"
#include "analysis/trace_analysis.h"
#include "analysis/trace_symbolizer.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

constexpr int kRecordLine = __LINE__ + 4;  // the line of the record() call below
__attribute__((noinline)) void allocate_in_named_function(const std::string& path) {
  ASSERT_TRUE(start(path.c_str(), 8));
  // tests/tracing.cmake builds this file with -g, so this line is in the line table.
  record(EventKind::alloc, 0, 0, 0x7f0000001000, 4096, BackendId::vmm);
  stop();
}

std::string this_program() {
  char path[PATH_MAX];
  return ::realpath("/proc/self/exe", path) ? path : "";
}

bool have(const char* tool) { return std::system((std::string("command -v ") + tool + " >/dev/null 2>&1").c_str()) == 0; }

// The address of allocate_in_named_function in this program's own address space (what a frame minus
// the module's load base is), and that of one byte past its start (what a return address inside it is).
std::uint64_t file_address_of_named_function() {
  Dl_info info{};
  void* code = reinterpret_cast<void*>(&allocate_in_named_function);
  if (!::dladdr(code, &info)) return 0;
  return reinterpret_cast<std::uint64_t>(code) - reinterpret_cast<std::uint64_t>(info.dli_fbase);
}

TEST(TraceSymbolizer, ARecordedStackIsNamedByFunctionAndLine) {
  const std::string path = make_temp_dir() + "/stacks.trace";
  allocate_in_named_function(path);
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.message;
  if (trace.header.flags & 1) GTEST_SKIP() << "libunwind.so.8 is not installed (scripts/setup.sh): no stacks";
  TraceSummary s = summarize(trace);
  ASSERT_EQ(s.sites.size(), 1u);
  Symbolizer symbols(trace);
  symbols.resolve(s.sites[0].frames);
  std::string stack;
  bool named = false, with_line = false;
  for (std::uint64_t f : s.sites[0].frames) {
    const FrameSymbol frame = symbols.lookup(f);
    stack += frame.text() + "\n";
    if (frame.function.find("allocate_in_named_function(std::") != std::string::npos) {
      named = true;
      with_line = frame.location == "trace_symbolizer_test.cpp:" + std::to_string(kRecordLine);
    }
  }
  EXPECT_TRUE(named) << stack;
  if (have("addr2line"))
    EXPECT_TRUE(with_line) << stack;
  else
    std::cerr << "addr2line is not installed (binutils): lines not checked\n";
  // The summary names the site by its function.
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_summary(path, 5, {out, err, false}), 0) << err.str();
  EXPECT_NE(out.str().find("allocate_in_named_function"), std::string::npos) << out.str();
}

TEST(TraceSymbolizer, TheSymbolTableNamesFunctionsWithoutDebugInfo) {
  if (!have("objcopy")) GTEST_SKIP() << "objcopy (binutils) is not installed: cannot make a copy without debug info";
  const std::string stripped = make_temp_dir() + "/no_debug_info";
  ASSERT_EQ(std::system(("objcopy --strip-debug '" + this_program() + "' " + stripped).c_str()), 0);
  const ModuleSymbols symbols(stripped);
  ASSERT_TRUE(symbols.loaded()) << symbols.why_not();
  EXPECT_FALSE(symbols.has_line_table());
  const std::uint64_t at = file_address_of_named_function();
  ASSERT_NE(at, 0u);
  EXPECT_NE(symbols.function_at(at + 1).find("allocate_in_named_function"), std::string::npos);
  const FrameSymbol frame = symbolize_frame(stripped, at + 1);
  EXPECT_EQ(frame.location, "");
  EXPECT_EQ(frame.text().rfind("gpushim::tracing::(anonymous namespace)::allocate_in_named_function(", 0), 0u)
      << frame.text();
}

TEST(TraceSymbolizer, AMissingModuleOrAnotherBuildGivesTheAddress) {
  EXPECT_EQ(symbolize_frame("/nonexistent/lib/libtorch_cpu.so", 0x197746c).text(), "libtorch_cpu.so+0x197746c");
  // This very program, recorded under another build id: its names would be wrong, so none are given.
  const std::uint64_t at = file_address_of_named_function() + 1;
  const FrameSymbol mismatch = symbolize_frame(this_program(), at, "00112233445566778899aabbccddeeff00112233");
  EXPECT_EQ(mismatch.function, "");
  EXPECT_EQ(mismatch.text().rfind("trace_tests+0x", 0), 0u) << mismatch.text();
  EXPECT_NE(symbolize_frame(this_program(), at).function, "") << "and with no build id to compare, it is read";
}

TEST(TraceSymbolizer, ADamagedFileIsRefusedNotReadPast) {
  const std::string dir = make_temp_dir();
  std::vector<unsigned char> elf = read_bytes(this_program());
  ASSERT_GT(elf.size(), 4096u);
  elf.resize(200);  // the header, pointing at section tables that are not there
  write_bytes(dir + "/cut.so", elf);
  EXPECT_FALSE(ModuleSymbols(dir + "/cut.so").loaded());
  write_bytes(dir + "/text.so", {'h', 'e', 'l', 'l', 'o'});
  EXPECT_FALSE(ModuleSymbols(dir + "/text.so").loaded());
  EXPECT_EQ(symbolize_frame(dir + "/text.so", 0x40).text(), "text.so+0x40");
  EXPECT_FALSE(ModuleSymbols(dir).loaded()) << "a directory";
}

// Sites whose label frames read the same are named apart by the frame where their stacks part.
TEST(TraceSymbolizer, SitesOfOneLabelAreToldApart) {
  Trace t;
  t.modules.push_back({"/nonexistent/libtorch_cpu.so", "", 0x100000, 0x200000});
  const std::vector<std::vector<std::uint64_t>> stacks = {{0x100010, 0x100100, 0x100500},
                                                          {0x100010, 0x100100, 0x100600},
                                                          {0x100010, 0x100200},
                                                          {0x100010, 0x100200}};
  std::uint64_t time = 0;
  for (const auto& stack : stacks) {
    TraceEvent e{};
    e.kind = EventKind::alloc;
    e.time_ns = ++time;
    e.address = time << 20;
    e.size = time << 20;  // later sites peak higher: sorted in reverse
    e.first_frame = std::uint32_t(t.frames.size());
    e.frame_count = std::uint16_t(stack.size());
    t.frames.insert(t.frames.end(), stack.begin(), stack.end());
    t.events.push_back(e);
  }
  TraceSummary s = summarize(t);
  ASSERT_EQ(s.sites.size(), 3u);
  Symbolizer symbols(t);
  symbols.resolve(t.frames);
  const std::vector<std::string> names = site_names(s.sites, 3, symbols);
  EXPECT_EQ(names[0], "libtorch_cpu.so+0x10 via libtorch_cpu.so+0x200");
  EXPECT_EQ(names[1], "libtorch_cpu.so+0x10 via libtorch_cpu.so+0x600");
  EXPECT_EQ(names[2], "libtorch_cpu.so+0x10 via libtorch_cpu.so+0x500");
}

}  // namespace
}  // namespace gpushim::tracing
