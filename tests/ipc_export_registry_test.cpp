// The exporter's bookkeeping, with memfds standing in for the driver's physical-memory fds.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "ipc/export_registry.h"

using gpushim::ipc::ExportedChunk;
using gpushim::ipc::ExportRecord;
using gpushim::ipc::ExportRegistry;

namespace {

int make_memfd(std::size_t size) {
  int fd = memfd_create("gpushim-test-chunk", MFD_CLOEXEC);
  if (fd >= 0 && ftruncate(fd, static_cast<off_t>(size)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool fd_is_open(int fd) {
  struct stat info;
  return fstat(fd, &info) == 0;
}

ExportRecord two_chunk_record() {
  ExportRecord record;
  record.block_size = 3000;
  record.offset_in_span = 4096 - 512;
  record.device = 0;
  record.chunks = {ExportedChunk{0, 4096, -1}, ExportedChunk{4096, 8192, -1}};
  return record;
}

}  // namespace

TEST(ExportRegistry, FindReturnsDupsOfTheChunkFds) {
  ExportRegistry registry;
  const int a = make_memfd(4096), b = make_memfd(8192);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  ASSERT_TRUE(registry.add_chunk(11, a));
  ASSERT_TRUE(registry.add_chunk(12, b));
  EXPECT_EQ(registry.chunk_fd(11), a);

  const std::uint64_t id = registry.add_export(0x1000, {11, 12}, two_chunk_record());
  ASSERT_NE(id, 0u);
  ExportRecord found;
  ASSERT_TRUE(registry.find(id, &found));
  ASSERT_EQ(found.chunks.size(), 2u);
  EXPECT_EQ(found.block_size, 3000u);
  EXPECT_EQ(found.offset_in_span, 4096u - 512u);
  EXPECT_EQ(found.chunks[1].offset_in_span, 4096u);
  EXPECT_EQ(found.chunks[1].size, 8192u);
  for (const ExportedChunk& chunk : found.chunks) {
    EXPECT_NE(chunk.fd, a);
    EXPECT_NE(chunk.fd, b);
    struct stat info;
    ASSERT_EQ(fstat(chunk.fd, &info), 0);
    EXPECT_EQ(static_cast<std::size_t>(info.st_size), chunk.size);  // the dup is of the right chunk
    close(chunk.fd);
  }
}

TEST(ExportRegistry, SameBlockExportedTwiceKeepsItsId) {
  ExportRegistry registry;
  ASSERT_TRUE(registry.add_chunk(11, make_memfd(4096)));
  ASSERT_TRUE(registry.add_chunk(12, make_memfd(8192)));
  const std::uint64_t first = registry.add_export(0x1000, {11, 12}, two_chunk_record());
  EXPECT_EQ(registry.add_export(0x1000, {11, 12}, two_chunk_record()), first);
  ExportRecord other = two_chunk_record();
  other.block_size = 100;
  EXPECT_NE(registry.add_export(0x1000, {11, 12}, other), first);
  EXPECT_EQ(registry.export_count(), 2u);
}

TEST(ExportRegistry, UnknownChunksAndIdsAreRefused) {
  ExportRegistry registry;
  EXPECT_EQ(registry.add_export(0x1000, {99}, ExportRecord{0, 0, 0, {ExportedChunk{0, 4096, -1}}}), 0u);
  ExportRecord found;
  EXPECT_FALSE(registry.find(1, &found));
  const int fd = make_memfd(4096);
  ASSERT_TRUE(registry.add_chunk(5, fd));
  EXPECT_FALSE(registry.add_chunk(5, make_memfd(4096)));  // second fd for the same chunk is closed
  EXPECT_EQ(registry.chunk_fd(5), fd);
}

TEST(ExportRegistry, ReleasedChunkClosesItsFdAndEndsItsExports) {
  ExportRegistry registry;
  const int a = make_memfd(4096);
  ASSERT_TRUE(registry.add_chunk(11, a));
  ASSERT_TRUE(registry.add_chunk(12, make_memfd(8192)));
  const std::uint64_t id = registry.add_export(0x1000, {11, 12}, two_chunk_record());
  ASSERT_TRUE(registry.forget_chunk(11));
  EXPECT_FALSE(fd_is_open(a));
  ExportRecord found;
  EXPECT_FALSE(registry.find(id, &found));
  EXPECT_EQ(registry.export_count(), 0u);
  EXPECT_EQ(registry.chunk_count(), 1u);
  EXPECT_FALSE(registry.forget_chunk(11));
}

TEST(ExportRegistry, ClearClosesEverything) {
  ExportRegistry registry;
  const int a = make_memfd(4096);
  ASSERT_TRUE(registry.add_chunk(1, a));
  registry.clear();
  EXPECT_FALSE(fd_is_open(a));
  EXPECT_EQ(registry.chunk_count(), 0u);
}
