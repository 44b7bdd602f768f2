// The annotations as an NVTX tool sees them, with a stand-in tool (fake_nvtx_memory_tool.cpp) that
// serves only the memory extension: a heap per mapped range, a region per block of its requested size
// (one per heap it touches), and everything unregistered again. Own process: NVTX decides once.
#include <dlfcn.h>

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "annotations/nvtx_memory.h"

#ifndef GPUSHIM_FAKE_NVTX_TOOL
#error "GPUSHIM_FAKE_NVTX_TOOL must name the stand-in tool's shared library"
#endif

namespace {

namespace a = gpushim::annotations;

std::string tool_log() {
  void* tool = dlopen(GPUSHIM_FAKE_NVTX_TOOL, RTLD_NOW);  // the copy NVTX loaded (same handle)
  if (!tool) return "tool not loadable";
  auto log = reinterpret_cast<const char* (*)()>(dlsym(tool, "fake_tool_log"));
  std::string text = log ? log() : "no fake_tool_log";
  dlclose(tool);
  return text;
}

TEST(AnnotationsWithTool, HeapsPerMappingAndRegionsPerBlock) {
  ASSERT_EQ(setenv("NVTX_INJECTION64_PATH", GPUSHIM_FAKE_NVTX_TOOL, 1), 0);  // before any NVTX call
  a::on_block_allocated(0x100000, 16);  // before any mapping: nothing to say
  a::on_memory_mapped(0x200000, 0x200000, 0);
  EXPECT_TRUE(a::tool_attached()) << "the memory extension alone makes a tool (the domain is null here)";
  a::on_memory_mapped(0x400000, 0x200000, 0);
  a::on_block_allocated(0x200100, 4000);   // inside the first mapping: its requested size, not rounded
  a::on_block_allocated(0x3fff00, 0x200);  // straddles both mappings: one region in each heap
  a::on_block_allocated(0x900000, 64);     // in no heap (a passthrough block): ignored
  a::on_block_allocated(0x200200, 0);      // zero bytes: left unregistered, so any access is reported
  a::on_block_freed(0x200100);
  a::on_block_freed(0x3fff00);
  a::on_block_freed(0x900000);
  a::on_block_freed(0x200200);
  a::on_memory_unmapping(0x200000);
  a::on_memory_unmapping(0x200000);  // twice: the heap is gone, nothing more to say
  EXPECT_EQ(tool_log(),
            "heap 0x200000 0x200000\n"
            "heap 0x400000 0x200000\n"
            "region 0x200100 0xfa0\n"
            "region 0x3fff00 0x100\n"
            "region 0x400000 0x100\n"
            "region-gone 0x200100 0\n"
            "region-gone 0x3fff00 0\n"
            "region-gone 0x400000 0\n"
            "heap-gone 0x200000 0\n");
}

}  // namespace
