// Allocation sites: told apart by the whole recorded stack, named after the first frame outside the
// allocator plumbing (CUDA runtime, PyTorch's caching allocator, gpushim), which every stack shares.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/trace_test_support.h"
#include "analysis/trace_analysis.h"
#include "analysis/trace_html_report.h"
#include "analysis/trace_symbolizer.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

// Module paths that do not exist here, so every frame symbolises as module+offset.
constexpr std::uint64_t kCudart = 0x100000, kC10Cuda = 0x200000, kApp = 0x400000, kNowhere = 0x900000;

Trace trace_with_stacks(const std::vector<std::vector<std::uint64_t>>& stacks) {
  Trace t;
  t.modules.push_back({"/nonexistent/lib/libcudart.so.13", "", kCudart, kCudart + 0x100000});
  t.modules.push_back({"/nonexistent/lib/libc10_cuda.so", "", kC10Cuda, kC10Cuda + 0x100000});
  t.modules.push_back({"/nonexistent/bin/train", "", kApp, kApp + 0x100000});
  std::uint64_t time = 0, address = 0x7f0000000000;
  for (const auto& stack : stacks) {
    TraceEvent e{};
    e.time_ns = ++time;
    e.address = address += 0x100000;
    e.size = 1 << 20;
    e.first_frame = std::uint32_t(t.frames.size());
    e.frame_count = std::uint16_t(stack.size());
    e.kind = EventKind::alloc;
    t.frames.insert(t.frames.end(), stack.begin(), stack.end());
    t.events.push_back(e);
  }
  return t;
}

std::string label_of(const Trace& trace, const AllocationSite& site) {
  Symbolizer symbols(trace);
  symbols.resolve(site.frames);
  return site_label(site, symbols);
}

TEST(TraceSites, PlumbingModulesMatchByFileNamePrefix) {
  EXPECT_TRUE(is_allocator_plumbing("/usr/local/cuda/lib64/libcudart.so.13"));
  EXPECT_TRUE(is_allocator_plumbing("/usr/lib/x86_64-linux-gnu/libcuda.so.1"));
  EXPECT_TRUE(is_allocator_plumbing("/site-packages/torch/lib/libc10_cuda.so"));
  EXPECT_TRUE(is_allocator_plumbing("/site-packages/torch/lib/libc10.so"));
  EXPECT_TRUE(is_allocator_plumbing("/work/build/libgpushim.so"));
  // Real callers stay: cuBLAS workspaces, PyTorch's operators, the program.
  EXPECT_FALSE(is_allocator_plumbing("/usr/local/cuda/lib64/libcublasLt.so.13"));
  EXPECT_FALSE(is_allocator_plumbing("/site-packages/torch/lib/libtorch_cuda.so"));
  EXPECT_FALSE(is_allocator_plumbing("/home/me/libcudacity/train"));  // only the file name counts
  EXPECT_FALSE(is_allocator_plumbing(""));
}

TEST(TraceSites, LabelIsTheFirstFrameOutsideThePlumbing) {
  Trace trace = trace_with_stacks({{kCudart + 0x41b5e, kC10Cuda + 0x44bec, kApp + 0x1234, kApp + 0x5678}});
  TraceSummary s = summarize(trace);
  ASSERT_EQ(s.sites.size(), 1u);
  const AllocationSite& site = s.sites[0];
  ASSERT_EQ(site.frames.size(), 4u);  // the whole stack is kept
  EXPECT_EQ(site.label_frame, 2u);
  EXPECT_FALSE(site.all_plumbing);
  EXPECT_EQ(label_of(trace, site), "train+0x1234  [2 allocator frames skipped]");
}

TEST(TraceSites, StacksSharingTheirFirstFramesAreDifferentSites) {
  // Same plumbing and same label frame, different callers further out: two sites, not one.
  Trace trace = trace_with_stacks({{kCudart + 0x10, kC10Cuda + 0x20, kApp + 0x30, kApp + 0x40},
                                   {kCudart + 0x10, kC10Cuda + 0x20, kApp + 0x30, kApp + 0x50},
                                   {kCudart + 0x10, kC10Cuda + 0x20, kApp + 0x30, kApp + 0x50}});
  TraceSummary s = summarize(trace);
  ASSERT_EQ(s.sites.size(), 2u);
  EXPECT_EQ(s.sites[0].count + s.sites[1].count, 3u);
  EXPECT_NE(s.sites[0].frames, s.sites[1].frames);
}

TEST(TraceSites, UnknownModuleIsNotPlumbing) {
  Trace trace = trace_with_stacks({{kNowhere + 0x10, kCudart + 0x10, kApp + 0x30}});
  TraceSummary s = summarize(trace);
  ASSERT_EQ(s.sites.size(), 1u);
  EXPECT_EQ(s.sites[0].label_frame, 0u);
  EXPECT_EQ(label_of(trace, s.sites[0]), "?+0x900010");
}

TEST(TraceSites, StackEntirelyInPlumbingIsNamedByItsOutermostFrame) {
  Trace trace = trace_with_stacks({{kCudart + 0x10, kCudart + 0x20, kC10Cuda + 0x30}});
  TraceSummary s = summarize(trace);
  ASSERT_EQ(s.sites.size(), 1u);
  EXPECT_TRUE(s.sites[0].all_plumbing);
  EXPECT_EQ(s.sites[0].label_frame, 2u);
  EXPECT_EQ(label_of(trace, s.sites[0]),
            "libc10_cuda.so+0x30  [all 3 recorded frames are allocator plumbing]");
}

TEST(TraceSites, NoStackHasItsOwnLabel) {
  Trace trace = trace_with_stacks({{}});
  TraceSummary s = summarize(trace);
  ASSERT_EQ(s.sites.size(), 1u);
  EXPECT_EQ(label_of(trace, s.sites[0]), "(no stack recorded)");
}

// The real PyTorch trace: every stack starts in libcudart / libc10_cuda, so no site may be named there,
// and the top sites are more than one stack.
TEST(TraceSites, BundledTorchTraceIsNotLabelledByTheRuntime) {
  std::string path = std::string(GPUSHIM_TEST_DATA_DIR) + "/torch_transformer.trace.zst";
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.message;
  TraceSummary s = summarize(trace);
  ASSERT_GE(s.sites.size(), 15u);
  for (std::size_t i = 0; i < 15; ++i) {
    const AllocationSite& site = s.sites[i];
    ASSERT_FALSE(site.frames.empty());
    EXPECT_FALSE(site.all_plumbing) << i;
    const TraceModule* m = trace.module_of(site.frames[site.label_frame]);
    ASSERT_NE(m, nullptr);
    EXPECT_FALSE(is_allocator_plumbing(m->path)) << m->path;
  }
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_summary(path, 15, {out, err, false}), 0) << err.str();
  EXPECT_EQ(out.str().find("at libcudart"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("allocator frames skipped]"), std::string::npos) << out.str();
  // The full stack is still printed under each site, plumbing included.
  EXPECT_NE(out.str().find("libcudart.so.13+0x41b5e"), std::string::npos);

  std::string html = testing::make_temp_dir() + "/report.html";
  ASSERT_EQ(run_trace_report(path, html, {out, err, false}), 0) << err.str();
  std::ifstream f(html);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::size_t table = text.find("id=\"table-sites\"");
  ASSERT_NE(table, std::string::npos);
  std::string sites = text.substr(table, text.find("</table>", table) - table);
  EXPECT_NE(sites.find("<td class=\"name\">"), std::string::npos) << sites;
  EXPECT_EQ(sites.find("<td class=\"name\">libcudart"), std::string::npos) << sites;
}

}  // namespace
}  // namespace gpushim::tracing
