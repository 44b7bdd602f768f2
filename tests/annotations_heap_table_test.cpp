// The NVTX annotations' heap bookkeeping, and that the annotations are inert without a tool.
#include <cstdlib>

#include <gtest/gtest.h>

#include "annotations/nvtx_memory.h"
#include "annotations/nvtx_ranges.h"

using gpushim::annotations::HeapTable;

TEST(AnnotationsHeapTable, FindsTheHeapThatHoldsTheWholeBlock) {
  HeapTable table;
  int a = 0, b = 0;
  ASSERT_TRUE(table.add(0x10000, 0x10000, &a));
  ASSERT_TRUE(table.add(0x40000, 0x1000, &b));
  EXPECT_EQ(table.find(0x10000, 1), &a);
  EXPECT_EQ(table.find(0x1ffff, 1), &a);
  EXPECT_EQ(table.find(0x1ff00, 0x100), &a);
  EXPECT_EQ(table.find(0x1ff00, 0x101), nullptr);  // runs past the heap's end
  EXPECT_EQ(table.find(0x20000, 1), nullptr);
  EXPECT_EQ(table.find(0xffff, 1), nullptr);
  EXPECT_EQ(table.find(0x40800, 8), &b);
  EXPECT_EQ(table.remove(0x10000), &a);
  EXPECT_EQ(table.find(0x10000, 1), nullptr);
  EXPECT_EQ(table.remove(0x10000), nullptr);
  EXPECT_EQ(table.count(), 1);
}

TEST(AnnotationsHeapTable, RefusesBeyondCapacity) {
  HeapTable table;
  for (int i = 0; i < HeapTable::kMaxHeaps; ++i) ASSERT_TRUE(table.add(0x1000u * (i + 1), 0x1000, nullptr));
  EXPECT_FALSE(table.add(0x10000000, 0x1000, nullptr));
  EXPECT_FALSE(HeapTable().add(0x1000, 0, nullptr));  // an empty heap holds nothing
}

TEST(AnnotationsWithoutTool, EverythingIsANoOp) {
  if (getenv("NVTX_INJECTION64_PATH") != nullptr) GTEST_SKIP() << "an NVTX tool is attached";
  EXPECT_FALSE(gpushim::annotations::tool_attached());
  gpushim::annotations::on_memory_mapped(0x10000, 0x10000, 0);
  gpushim::annotations::on_block_allocated(0x10000, 100);
  gpushim::annotations::on_block_freed(0x10000);
  gpushim::annotations::on_memory_unmapping(0x10000);
  { gpushim::annotations::ScopedRange range(gpushim::annotations::SlowEvent::arena_growth); }
  EXPECT_FALSE(gpushim::annotations::tool_attached());
}
