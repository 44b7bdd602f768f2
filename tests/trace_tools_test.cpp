// The tools end to end: Chrome JSON that parses, replay on every provider backend, the HTML report
// rendered by headless Chromium, the command line's exit codes, zstd round trip, and the bundled real
// trace (tests/data/torch_transformer.trace.zst) when it is present.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tests/trace_test_support.h"
#include "tools/trace_commands.h"
#include "analysis/trace_replay.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

std::string synthetic(const std::string& dir) {
  std::string path = dir + "/synthetic.trace";
  EXPECT_TRUE(write_synthetic_trace(path, 4));
  return path;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

TEST(TraceTools, ChromeExportParsesWithCountersAndAllocations) {
  std::string dir = make_temp_dir();
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_export(synthetic(dir), "chrome", dir + "/out.json", {out, err, false}), 0) << err.str();
  nlohmann::json j = nlohmann::json::parse(slurp(dir + "/out.json"));
  ASSERT_TRUE(j["traceEvents"].is_array());
  int counters = 0, allocations = 0, instants = 0;
  std::uint64_t max_live = 0, max_reserved = 0;
  for (const auto& e : j["traceEvents"]) {
    std::string ph = e["ph"];
    if (ph == "C") {
      ++counters;
      std::uint64_t& max = e["name"] == "live bytes" ? max_live : max_reserved;
      max = std::max<std::uint64_t>(max, e["args"]["bytes"]);
    }
    if (ph == "X") {
      ++allocations;
      EXPECT_GE(e["dur"].get<double>(), 0.0);
    }
    if (ph == "i") ++instants;
  }
  EXPECT_EQ(allocations, 4);
  EXPECT_EQ(instants, 3);  // failed, OOM, cache release
  EXPECT_GT(counters, 0);
  EXPECT_EQ(max_live, kSyntheticPeakLive);
  EXPECT_EQ(max_reserved, kSyntheticPeakReserved);
}

TEST(TraceTools, ReplayRunsOnEveryProviderBackend) {
  std::string dir = make_temp_dir();
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(synthetic(dir), &trace, &error)) << error.message;
  auto backends = replayable_backends();
  ASSERT_FALSE(backends.empty());
  for (const BackendInfo* b : backends) {
    ReplayResult r = replay_trace(trace, *b);
    EXPECT_EQ(r.backend, b->name);
    EXPECT_EQ(r.failed, 0u) << b->name;
    EXPECT_EQ(r.peak_live, kSyntheticPeakLive) << b->name;
    EXPECT_GE(r.peak_reserved, r.peak_live) << b->name;
    EXPECT_GE(r.fragmentation, 1.0) << b->name;
    EXPECT_EQ(r.operations, 8u) << b->name;  // 4 allocations, 3 frees, C freed after the last event
    EXPECT_EQ(r.provider_misuse, 0u) << b->name;
  }
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_replay(dir + "/synthetic.trace", "all", {out, err, false}), 0) << err.str();
  for (const BackendInfo* b : backends) EXPECT_NE(out.str().find(b->name), std::string::npos) << out.str();
  EXPECT_EQ(run_trace_replay(dir + "/synthetic.trace", "no-such-backend", {out, err, false}), 1);
}

TEST(TraceTools, CommandLineExitCodes) {
  std::string dir = make_temp_dir();
  std::string good = synthetic(dir);
  write_bytes(dir + "/empty.trace", {});
  auto run = [](std::vector<std::string> args) {
    CLI::App app("gpushim");
    tools::add_trace_commands(app);
    std::vector<const char*> argv{"gpushim"};
    for (auto& a : args) argv.push_back(a.c_str());
    try {
      app.parse(int(argv.size()), const_cast<char**>(argv.data()));
    } catch (const CLI::ParseError& e) {
      return e.get_exit_code();
    }
    return 0;
  };
  EXPECT_EQ(run({"trace", "summary", good}), 0);
  EXPECT_EQ(run({"trace", "summary", dir + "/empty.trace"}), kExitBadTrace);
  EXPECT_EQ(run({"trace", "replay", good, "--backend", "all"}), 0);
  EXPECT_EQ(run({"trace", "export", "--format", "chrome", good, "-o", dir + "/x.json"}), 0);
  EXPECT_NE(run({"trace", "export", "--format", "nope", good, "-o", dir + "/x.json"}), 0);
}

TEST(TraceTools, CompressedTracesReadLikeRawOnes) {
  std::string dir = make_temp_dir();
  std::ostringstream out, err;
  int code = run_trace_compress(synthetic(dir), dir + "/s.trace.zst", {out, err, false});
  if (code != 0 && err.str().find("without zstd") != std::string::npos) GTEST_SKIP() << err.str();
  ASSERT_EQ(code, 0) << err.str();
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(dir + "/s.trace.zst", &trace, &error)) << error.message;
  EXPECT_TRUE(trace.compressed);
  EXPECT_EQ(trace.events.size(), 13u);
  // A truncated .zst is reported, not crashed on.
  std::vector<unsigned char> z = read_bytes(dir + "/s.trace.zst");
  z.resize(z.size() / 2);
  write_bytes(dir + "/cut.trace.zst", z);
  EXPECT_EQ(run_trace_summary(dir + "/cut.trace.zst", 5, {out, err, false}), kExitBadTrace);
}

std::string find_chromium() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (access(p, X_OK) == 0) return p;
  return "";
}

TEST(TraceTools, HtmlReportRendersItsPlotsInHeadlessChromium) {
  std::string dir = make_temp_dir();
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_report(synthetic(dir), dir + "/report.html", {out, err, false}), 0) << err.str();
  std::string html = slurp(dir + "/report.html");
  for (const char* id : {"id=\"overview\"", "id=\"memory\"", "id=\"lifetimes\"", "id=\"sizes\"", "table-sites"})
    ASSERT_NE(html.find(id), std::string::npos) << id;
  std::string chromium = find_chromium();
  if (chromium.empty()) GTEST_SKIP() << "chromium is not installed (apt-get install -y chromium); "
                                        "the report was written but not rendered";
  std::string command = chromium +
                        " --headless --no-sandbox --disable-gpu --disable-background-networking"
                        " --disable-component-update --disable-sync --no-first-run --user-data-dir=" +
                        dir + "/profile --dump-dom file://" + dir + "/report.html 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string dom;
  char buf[4096];
  for (std::size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) dom.append(buf, n);
  ASSERT_EQ(pclose(pipe), 0) << dom;
  // The rendered DOM (not just our text) holds each plot the page's script drew, with its elements.
  for (const char* id : {"id=\"plot-overview\"", "id=\"plot-memory\"", "id=\"plot-sizes\"", "id=\"plot-lifetimes\""})
    EXPECT_NE(dom.find(id), std::string::npos) << id;
  EXPECT_NE(dom.find("<polyline class=\"live\""), std::string::npos);
  EXPECT_NE(dom.find("<polyline class=\"reserved\""), std::string::npos);
  EXPECT_NE(dom.find("<rect class=\"bar\""), std::string::npos);
  EXPECT_NE(dom.find("<rect class=\"span\""), std::string::npos);
}

// The real trace the lead records on the GPU (PyTorch transformer). Skips until it is committed.
TEST(TraceTools, BundledRealTrace) {
  std::string path;
  for (const char* name : {"torch_transformer.trace.zst", "torch_transformer.trace"}) {
    std::string p = std::string(GPUSHIM_TEST_DATA_DIR) + "/" + name;
    if (access(p.c_str(), R_OK) == 0) path = p;
  }
  if (path.empty()) GTEST_SKIP() << "tests/data/torch_transformer.trace.zst is not committed yet";
  std::string dir = make_temp_dir();
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_summary(path, 10, {out, err, false}), 0) << err.str();
  EXPECT_NE(out.str().find("peak live"), std::string::npos);
  ASSERT_EQ(run_trace_report(path, dir + "/real.html", {out, err, false}), 0) << err.str();
  ASSERT_EQ(run_trace_export(path, "chrome", dir + "/real.json", {out, err, false}), 0) << err.str();
  EXPECT_NO_THROW(nlohmann::json::parse(slurp(dir + "/real.json")));
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.message;
  for (const BackendInfo* b : replayable_backends()) {
    ReplayResult r = replay_trace(trace, *b);
    EXPECT_GT(r.peak_live, 0u) << b->name;
    EXPECT_GE(r.peak_reserved, r.peak_live) << b->name;
  }
}

}  // namespace
}  // namespace gpushim::tracing
