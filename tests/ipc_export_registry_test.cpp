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
  ExportRecord unknown_chunk;
  unknown_chunk.chunks = {ExportedChunk{0, 4096, -1}};
  EXPECT_EQ(registry.add_export(0x1000, {99}, unknown_chunk), 0u);
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

// ---- holders: a block freed by the exporter while another process has it open is kept until released ----

namespace {

bool nobody_alive(pid_t) { return false; }
bool everybody_alive(pid_t) { return true; }

std::uint64_t exported_block(ExportRegistry& registry, std::uint64_t base) {
  if (registry.chunk_fd(11) < 0) registry.add_chunk(11, make_memfd(4096));
  if (registry.chunk_fd(12) < 0) registry.add_chunk(12, make_memfd(8192));
  return registry.add_export(base, {11, 12}, two_chunk_record());
}

void close_all(ExportRecord* record) {
  for (ExportedChunk& chunk : record->chunks) close(chunk.fd);
}

}  // namespace

TEST(ExportRegistryHolders, FreeOfABlockNobodyImportedForgetsItsExports) {
  ExportRegistry registry;
  const std::uint64_t id = exported_block(registry, 0x1000);
  EXPECT_FALSE(registry.retire_block(0x1000));
  EXPECT_EQ(registry.export_count(), 0u);
  ExportRecord found;
  EXPECT_FALSE(registry.find_for_import(id, 100, &found));  // a handle to freed memory does not open
  EXPECT_EQ(registry.retired_count(), 0u);
}

TEST(ExportRegistryHolders, BlockFreedWhileImportedIsHeldUntilTheLastRelease) {
  ExportRegistry registry;
  const std::uint64_t id = exported_block(registry, 0x1000);
  ExportRecord first, second;
  ASSERT_TRUE(registry.find_for_import(id, 100, &first));
  ASSERT_TRUE(registry.find_for_import(id, 200, &second));
  close_all(&first);
  close_all(&second);

  EXPECT_TRUE(registry.retire_block(0x1000));
  EXPECT_EQ(registry.retired_count(), 1u);
  ExportRecord late;
  EXPECT_FALSE(registry.find_for_import(id, 300, &late));  // retired: no new importer

  std::vector<std::uint64_t> released;
  registry.take_released_blocks(&everybody_alive, &released);
  EXPECT_TRUE(released.empty());
  EXPECT_TRUE(registry.release(id, 100));
  EXPECT_FALSE(registry.release(id, 100));  // released once only
  registry.take_released_blocks(&everybody_alive, &released);
  EXPECT_TRUE(released.empty());  // 200 still holds it
  EXPECT_TRUE(registry.release(id, 200));
  registry.take_released_blocks(&everybody_alive, &released);
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0], 0x1000u);
  EXPECT_EQ(registry.retired_count(), 0u);
  EXPECT_EQ(registry.export_count(), 0u);
  EXPECT_EQ(registry.chunk_count(), 2u);  // the chunks are the provider's to release
}

TEST(ExportRegistryHolders, OpensOfOneImporterAreCountedEach) {
  ExportRegistry registry;
  const std::uint64_t id = exported_block(registry, 0x1000);
  for (int i = 0; i < 2; ++i) {
    ExportRecord record;
    ASSERT_TRUE(registry.find_for_import(id, 100, &record));
    close_all(&record);
  }
  EXPECT_TRUE(registry.retire_block(0x1000));
  ASSERT_TRUE(registry.release(id, 100));
  std::vector<std::uint64_t> released;
  registry.take_released_blocks(nullptr, &released);
  EXPECT_TRUE(released.empty());
  ASSERT_TRUE(registry.release(id, 100));
  registry.take_released_blocks(nullptr, &released);
  EXPECT_EQ(released.size(), 1u);
}

TEST(ExportRegistryHolders, AnImporterThatExitedHoldsNothing) {
  ExportRegistry registry;
  const std::uint64_t id = exported_block(registry, 0x1000);
  ExportRecord record;
  ASSERT_TRUE(registry.find_for_import(id, 100, &record));
  close_all(&record);
  EXPECT_TRUE(registry.retire_block(0x1000));
  std::vector<std::uint64_t> released;
  registry.take_released_blocks(nullptr, &released);  // no liveness check: still held
  EXPECT_TRUE(released.empty());
  registry.take_released_blocks(&nobody_alive, &released);
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0], 0x1000u);
}

TEST(ExportRegistryHolders, OnlyTheFreedBlockIsHeld) {
  ExportRegistry registry;
  const std::uint64_t held = exported_block(registry, 0x1000);
  const std::uint64_t other = exported_block(registry, 0x2000);
  ASSERT_NE(held, other);
  ExportRecord record;
  ASSERT_TRUE(registry.find_for_import(held, 100, &record));
  close_all(&record);
  EXPECT_FALSE(registry.retire_block(0x2000));  // nobody imported it
  EXPECT_FALSE(registry.retire_block(0x3000));  // never exported
  EXPECT_TRUE(registry.retire_block(0x1000));
  EXPECT_EQ(registry.retired_count(), 1u);
  EXPECT_EQ(registry.export_count(), 1u);
}

TEST(ExportRegistryHolders, PoolExportsCarryTheirPointerData) {
  ExportRegistry registry;
  const std::uint64_t pool_key = (1ull << 63) | 0x5000;
  ASSERT_TRUE(registry.add_chunk(pool_key, make_memfd(4096)));
  ExportRecord pool_record;
  pool_record.kind = gpushim::ipc::ExportKind::pool_pointer;
  pool_record.block_size = 1000;
  pool_record.pool_id = pool_key;
  pool_record.chunks = {ExportedChunk{0, 1000, -1}};
  for (std::size_t i = 0; i < pool_record.pool_pointer_data.size(); ++i)
    pool_record.pool_pointer_data[i] = static_cast<std::uint8_t>(i * 7);
  const std::uint64_t id = registry.add_export(0x9000, {pool_key}, pool_record);
  ASSERT_NE(id, 0u);
  ExportRecord found;
  ASSERT_TRUE(registry.find_for_import(id, 100, &found));
  EXPECT_EQ(found.kind, gpushim::ipc::ExportKind::pool_pointer);
  EXPECT_EQ(found.pool_id, pool_key);
  EXPECT_EQ(found.pool_pointer_data, pool_record.pool_pointer_data);
  ASSERT_EQ(found.chunks.size(), 1u);
  EXPECT_TRUE(fd_is_open(found.chunks[0].fd));
  close_all(&found);
}
