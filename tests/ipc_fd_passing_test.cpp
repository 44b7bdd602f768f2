// Physical memory handed from an exporter to an importer process over the export server's socket,
// with memfds standing in for the fds of cuMemExportToShareableHandle: the importer (a forked child)
// sees the exporter's bytes and the exporter sees what the importer wrote back.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <gtest/gtest.h>

#include "ipc/export_registry.h"
#include "ipc/export_server.h"
#include "ipc/fd_passing.h"

using namespace gpushim::ipc;

namespace {

constexpr std::uint64_t kToken = 0x5eed5eed5eed5eedull;

unsigned char pattern(std::size_t i, int generation) { return static_cast<unsigned char>(i * 7 + generation * 13); }

// A chunk: a memfd of `size` bytes filled with generation 0 of the pattern, mapped in this process.
struct Chunk {
  int fd = -1;
  unsigned char* bytes = nullptr;
  std::size_t size = 0;
};

Chunk make_chunk(std::size_t size) {
  Chunk chunk;
  chunk.size = size;
  chunk.fd = memfd_create("gpushim-test-chunk", MFD_CLOEXEC);
  if (chunk.fd < 0 || ftruncate(chunk.fd, static_cast<off_t>(size)) != 0) return chunk;
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, chunk.fd, 0);
  if (map == MAP_FAILED) return chunk;
  chunk.bytes = static_cast<unsigned char*>(map);
  for (std::size_t i = 0; i < size; ++i) chunk.bytes[i] = pattern(i, 0);
  return chunk;
}

// The importer: runs in the child, returns its exit status (0 = every check passed).
int importer(const std::string& server, std::uint64_t id) {
  ExportRecord wrong;
  if (fetch_export(server, kToken + 1, id, &wrong) != FetchStatus::refused) return 10;
  if (fetch_export(server, kToken, id + 1000, &wrong) != FetchStatus::unknown_export) return 11;
  if (fetch_export(server + ".nobody", kToken, id, &wrong) != FetchStatus::no_exporter) return 12;

  ExportRecord record;
  if (fetch_export(server, kToken, id, &record) != FetchStatus::ok) return 20;
  if (record.chunks.size() != 2 || record.block_size != 12345 || record.offset_in_span != 512) return 21;
  for (const ExportedChunk& chunk : record.chunks) {
    void* map = mmap(nullptr, chunk.size, PROT_READ | PROT_WRITE, MAP_SHARED, chunk.fd, 0);
    if (map == MAP_FAILED) return 22;
    close(chunk.fd);
    unsigned char* bytes = static_cast<unsigned char*>(map);
    for (std::size_t i = 0; i < chunk.size; ++i) {
      if (bytes[i] != pattern(i, 0)) return 23;
      bytes[i] = pattern(i, 1);
    }
    munmap(map, chunk.size);
  }
  return 0;
}

}  // namespace

TEST(IpcFdPassing, ImporterProcessGetsTheExportersMemory) {
  ExportRegistry registry;
  Chunk first = make_chunk(64 * 1024), second = make_chunk(128 * 1024);
  ASSERT_NE(first.bytes, nullptr);
  ASSERT_NE(second.bytes, nullptr);
  ASSERT_TRUE(registry.add_chunk(1, first.fd));
  ASSERT_TRUE(registry.add_chunk(2, second.fd));
  ExportRecord record;
  record.block_size = 12345;
  record.offset_in_span = 512;
  record.chunks = {ExportedChunk{0, first.size, -1}, ExportedChunk{first.size, second.size, -1}};
  const std::uint64_t id = registry.add_export(0x7000, {1, 2}, record);
  ASSERT_NE(id, 0u);

  const std::string name = "gpushim-ipc-test." + std::to_string(getpid());
  ExportServer server(registry, kToken, name);
  ASSERT_TRUE(server.start());
  ASSERT_TRUE(server.start());  // idempotent

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(importer(name, id));
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "importer check failed (see importer() for the step)";

  for (const Chunk* chunk : {&first, &second}) {
    for (std::size_t i = 0; i < chunk->size; ++i) {
      ASSERT_EQ(chunk->bytes[i], pattern(i, 1)) << "byte " << i << " not written back";
    }
  }
  server.stop();
  munmap(first.bytes, first.size);
  munmap(second.bytes, second.size);
}

TEST(IpcFdPassing, ReleasedMemoryIsNoLongerServed) {
  ExportRegistry registry;
  Chunk chunk = make_chunk(4096);
  ASSERT_TRUE(registry.add_chunk(9, chunk.fd));
  ExportRecord record;
  record.block_size = 100;
  record.chunks = {ExportedChunk{0, chunk.size, -1}};
  const std::uint64_t id = registry.add_export(0x9000, {9}, record);
  const std::string name = "gpushim-ipc-test-released." + std::to_string(getpid());
  ExportServer server(registry, kToken, name);
  ASSERT_TRUE(server.start());
  ExportRecord got;
  ASSERT_EQ(fetch_export(name, kToken, id, &got), FetchStatus::ok);  // same process: the server thread answers
  for (auto& c : got.chunks) close(c.fd);
  registry.forget_chunk(9);
  EXPECT_EQ(fetch_export(name, kToken, id, &got), FetchStatus::unknown_export);
  server.stop();
  munmap(chunk.bytes, chunk.size);
}

TEST(IpcFdPassing, WrongDescriptorCountIsRefusedAndNothingLeaks) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
  int fds[2] = {memfd_create("a", MFD_CLOEXEC), memfd_create("b", MFD_CLOEXEC)};
  const std::uint64_t payload = 42;
  ASSERT_TRUE(send_with_fds(pair[0], &payload, sizeof payload, fds, 2));
  std::uint64_t received = 0;
  int got[1] = {-1};
  EXPECT_FALSE(receive_with_fds(pair[1], &received, sizeof received, got, 1));  // two came, one expected

  ASSERT_TRUE(send_with_fds(pair[0], &payload, sizeof payload, fds, 1));
  ASSERT_TRUE(receive_with_fds(pair[1], &received, sizeof received, got, 1));
  EXPECT_EQ(received, 42u);
  EXPECT_GE(got[0], 0);
  close(got[0]);
  for (int fd : fds) close(fd);
  close(pair[0]);
  close(pair[1]);
}
