// Physical memory handed from an exporter to an importer process over the export server's socket,
// with memfds standing in for the fds of cuMemExportToShareableHandle: the importer (a forked child)
// sees the exporter's bytes and the exporter sees what the importer wrote back.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <string>
#include <vector>

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

// ---- holders over the socket: the exporter keeps a freed block until the importer releases it -------

namespace {

bool process_alive(pid_t pid) { return kill(pid, 0) == 0 || errno == EPERM; }

// A pool export over the wire: the pool's descriptor plus the block's export data.
ExportRecord pool_record() {
  ExportRecord record;
  record.kind = ExportKind::pool_pointer;
  record.block_size = 777;
  record.pool_id = (1ull << 63) | 0x4000;
  record.chunks = {ExportedChunk{0, 777, -1}};
  for (std::size_t i = 0; i < record.pool_pointer_data.size(); ++i)
    record.pool_pointer_data[i] = static_cast<std::uint8_t>(0xA0 ^ i);
  return record;
}

// The importer of a pool export: fetch, tell the parent (pipe), wait for its go, release if asked.
int pool_importer(const std::string& server, std::uint64_t id, int to_parent, int from_parent, bool release) {
  ExportRecord record;
  if (fetch_export(server, kToken, id, &record) != FetchStatus::ok) return 30;
  const ExportRecord expected = pool_record();
  if (record.kind != ExportKind::pool_pointer || record.block_size != 777 || record.pool_id != expected.pool_id ||
      record.pool_pointer_data != expected.pool_pointer_data || record.chunks.size() != 1 || record.chunks[0].fd < 0)
    return 31;
  close(record.chunks[0].fd);
  char go = 0;
  if (write(to_parent, "f", 1) != 1 || read(from_parent, &go, 1) != 1) return 32;
  if (release && release_export(server, kToken, id) != FetchStatus::ok) return 33;
  if (release && release_export(server, kToken, id) != FetchStatus::unknown_export) return 34;  // once only
  return 0;
}

struct HeldBlockRun {
  int exit_status = -1;
  bool held_while_imported = false;
  std::vector<std::uint64_t> released_while_alive;  // before the importer was reaped
  pid_t importer = 0;
};

HeldBlockRun run_pool_import(ExportRegistry& registry, const std::string& name, bool release) {
  HeldBlockRun run;
  const std::uint64_t pool_key = (1ull << 63) | 0x4000;
  registry.add_chunk(pool_key, memfd_create("gpushim-test-pool", MFD_CLOEXEC));
  const std::uint64_t id = registry.add_export(0xB000, {pool_key}, pool_record());
  int up[2], down[2];
  if (id == 0 || pipe(up) != 0 || pipe(down) != 0) return run;
  const pid_t child = fork();
  if (child == 0) _exit(pool_importer(name, id, up[1], down[0], release));
  run.importer = child;
  char fetched = 0;
  if (read(up[0], &fetched, 1) == 1) run.held_while_imported = registry.retire_block(0xB000);
  if (write(down[1], "g", 1) != 1) return run;
  int status = 0;
  if (!release) {
    // The child exits without releasing; until it is reaped it counts as alive.
    registry.take_released_blocks(nullptr, &run.released_while_alive);
  }
  waitpid(child, &status, 0);
  if (release) registry.take_released_blocks(nullptr, &run.released_while_alive);
  run.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  for (int fd : {up[0], up[1], down[0], down[1]}) close(fd);
  return run;
}

// A registry served under a socket of this test process.
class IpcHolders : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.start()); }
  void TearDown() override { server_.stop(); }
  ExportRegistry registry_;
  const std::string name_ = "gpushim-ipc-test-holders." + std::to_string(getpid());
  ExportServer server_{registry_, kToken, name_};
};

}  // namespace

TEST_F(IpcHolders, PoolBlockFreedWhileImportedIsReleasedByTheImporter) {
  ExportRegistry& registry = registry_;
  const HeldBlockRun run = run_pool_import(registry, name_, /*release=*/true);
  EXPECT_EQ(run.exit_status, 0) << "importer check failed (see pool_importer() for the step)";
  EXPECT_TRUE(run.held_while_imported);
  ASSERT_EQ(run.released_while_alive.size(), 1u);  // released by its message, no liveness check needed
  EXPECT_EQ(run.released_while_alive[0], 0xB000u);
  EXPECT_EQ(registry.export_count(), 0u);
}

TEST_F(IpcHolders, BlockHeldForAnImporterThatExitedIsReleased) {
  ExportRegistry& registry = registry_;
  const HeldBlockRun run = run_pool_import(registry, name_, /*release=*/false);
  EXPECT_EQ(run.exit_status, 0);
  EXPECT_TRUE(run.held_while_imported);
  EXPECT_TRUE(run.released_while_alive.empty());
  std::vector<std::uint64_t> released;
  registry.take_released_blocks(&process_alive, &released);  // the importer is gone now
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0], 0xB000u);
}
