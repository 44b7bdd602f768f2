// Every case of a trace file a user might hand the tools by mistake or on purpose: a directory, a
// device, /proc/self/mem, a FIFO nobody writes to, a zstd bomb, 600 devices, sizes near 2^64. Each ends
// in exit 0 with a truthful result or exit 2 with one line naming the offset, in bounded time and memory.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <sstream>
#include <thread>

#include "tests/trace_test_support.h"
#include "analysis/trace_reader.h"
#include "analysis/trace_replay.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

using namespace testing;
using Clock = std::chrono::steady_clock;

struct Outcome {
  int code;
  std::string out, err;
};

// Every trace command on `path`; each must end the same way.
std::vector<Outcome> every_command(const std::string& path, const std::string& dir) {
  std::vector<std::function<int(ToolStreams)>> commands = {
      [&](ToolStreams io) { return run_trace_summary(path, 5, io); },
      [&](ToolStreams io) { return run_trace_report(path, dir + "/out.html", io); },
      [&](ToolStreams io) { return run_trace_export(path, "chrome", dir + "/out.json", io); },
      [&](ToolStreams io) { return run_trace_replay(path, "all", io); },
      [&](ToolStreams io) { return run_trace_compress(path, dir + "/out.zst", io); },
  };
  std::vector<Outcome> outcomes;
  for (auto& command : commands) {
    std::ostringstream out, err;
    int code = command({out, err, false});
    outcomes.push_back({code, out.str(), err.str()});
  }
  return outcomes;
}

void expect_one_line_refusal(const Outcome& o, const std::string& reason) {
  EXPECT_EQ(o.code, kExitBadTrace) << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_NE(o.err.find("byte offset"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find(reason), std::string::npos) << o.err;
}

TEST(HostileTrace, DirectoryIsRefusedByEveryCommand) {
  std::string dir = make_temp_dir();
  for (const Outcome& o : every_command(GPUSHIM_TEST_DATA_DIR, dir)) expect_one_line_refusal(o, "is a directory");
}

TEST(HostileTrace, DevZeroIsRefusedAsADevice) {
  std::string dir = make_temp_dir();
  for (const Outcome& o : every_command("/dev/zero", dir)) expect_one_line_refusal(o, "is a device");
}

TEST(HostileTrace, ProcSelfMemEndsAtOnce) {
  std::string dir = make_temp_dir();
  auto start = Clock::now();
  for (const Outcome& o : every_command("/proc/self/mem", dir)) expect_one_line_refusal(o, "");
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
}

TEST(HostileTrace, FifoWithoutWriterTimesOut) {
  std::string fifo = make_temp_dir() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  ReadLimits limits;
  limits.pipe_idle_timeout_ms = 300;
  Trace trace;
  TraceError error;
  auto start = Clock::now();
  EXPECT_FALSE(read_trace(fifo, &trace, &error, {}, limits));
  EXPECT_NE(error.message.find("no data from the pipe"), std::string::npos) << error.message;
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
}

TEST(HostileTrace, FifoWithAWriterIsReadLikeAFile) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(write_synthetic_trace(dir + "/s.trace"));
  std::vector<unsigned char> bytes = read_bytes(dir + "/s.trace");
  std::string fifo = dir + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the reader waits for data, not for EOF
    std::FILE* f = std::fopen(fifo.c_str(), "wb");
    if (f) {
      std::fwrite(bytes.data(), 1, bytes.size(), f);
      std::fclose(f);
    }
  });
  Trace trace;
  TraceError error;
  EXPECT_TRUE(read_trace(fifo, &trace, &error)) << error.message;
  writer.join();
  EXPECT_EQ(trace.bytes, bytes.size());
  EXPECT_TRUE(trace.clean_end);
}

// A valid trace header, then `chunks` copies of one chunk of 64 free events: compresses ~1000x.
std::vector<unsigned char> huge_valid_trace(std::size_t chunks) {
  std::string dir = make_temp_dir();
  EXPECT_TRUE(write_synthetic_trace(dir + "/s.trace"));
  std::vector<unsigned char> out = read_bytes(dir + "/s.trace");
  out.resize(sizeof(format::FileHeader));
  std::vector<unsigned char> payload(64 * sizeof(format::EventRecord));
  for (std::size_t i = 0; i < 64; ++i) {
    format::EventRecord rec{};
    rec.type = std::uint8_t(format::RecordType::event);
    rec.kind = std::uint8_t(EventKind::free);
    rec.address = 0x1000 * (i + 1);
    std::memcpy(payload.data() + i * sizeof rec, &rec, sizeof rec);
  }
  format::ChunkHeader h{};
  std::memcpy(h.magic, format::kChunkMagic, 4);
  h.payload_bytes = std::uint32_t(payload.size());
  h.thread_id = 1;
  h.record_count = 64;
  h.checksum = format::chunk_checksum(1, 64, payload.data(), payload.size());
  for (std::size_t c = 0; c < chunks; ++c) {
    out.insert(out.end(), reinterpret_cast<unsigned char*>(&h), reinterpret_cast<unsigned char*>(&h) + sizeof h);
    out.insert(out.end(), payload.begin(), payload.end());
  }
  return out;
}

// zstd the command (scripts/setup.sh installs it): `zstd_options` may drop the frame's content size,
// so the reader must catch the bomb while inflating, not from the header.
std::string zstd_file(const std::vector<unsigned char>& plain, const std::string& path, const char* zstd_options) {
  write_bytes(path + ".plain", plain);
  std::string command = std::string("zstd -q -f -1 ") + zstd_options + " '" + path + ".plain' -o '" + path + "'";
  EXPECT_EQ(std::system(command.c_str()), 0) << command << " (the zstd command is needed: scripts/setup.sh)";
  std::remove((path + ".plain").c_str());
  return path;
}

TEST(HostileTrace, ZstdBombStopsAtTheCap) {
  std::string dir = make_temp_dir();
  std::vector<unsigned char> plain = huge_valid_trace(24 * 1024);  // ~64 MiB of valid chunks
  ReadLimits limits;
  limits.max_trace_bytes = 8u << 20;
  for (const char* options : {"", "--no-content-size"}) {
    std::string path = zstd_file(plain, dir + "/bomb" + (*options ? "-streamed" : "") + ".zst", options);
    Trace trace;
    TraceError error;
    auto start = Clock::now();
    EXPECT_FALSE(read_trace(path, &trace, &error, {}, limits)) << options;
    EXPECT_NE(error.message.find(std::to_string(limits.max_trace_bytes)), std::string::npos) << error.message;
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  }
}

TEST(HostileTrace, ZstdBombOfZerosStopsAtItsFirstBytes) {
  std::string dir = make_temp_dir();
  std::string path = zstd_file(std::vector<unsigned char>(256u << 20), dir + "/zeros.zst", "--no-content-size");
  Trace trace;
  TraceError error;
  auto start = Clock::now();
  EXPECT_FALSE(read_trace(path, &trace, &error));
  EXPECT_EQ(error.offset, 0u);
  EXPECT_NE(error.message.find("not a gpushim trace"), std::string::npos) << error.message;
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2)) << "inflated far past the first bytes";
}

TEST(HostileTrace, SixHundredDevicesAreReadButNotReplayed) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(start((dir + "/devices.trace").c_str(), 0));
  for (int d = 0; d < 600; ++d) record(EventKind::alloc, d, 0, 0x10000000, 1 << 20, BackendId::vmm);
  stop();
  std::ostringstream out, err;
  EXPECT_EQ(run_trace_summary(dir + "/devices.trace", 5, {out, err, false}), 0) << err.str();
  EXPECT_NE(out.str().find("600 devices"), std::string::npos) << out.str();
  std::ostringstream replay_out, replay_err;
  EXPECT_EQ(run_trace_replay(dir + "/devices.trace", "all", {replay_out, replay_err, false}), kExitBadTrace);
  EXPECT_EQ(replay_err.str(), "gpushim: " + dir + "/devices.trace: cannot replay: the trace allocates on 600 "
                              "devices; replay simulates at most 64\n");
}

TEST(HostileTrace, ImpossibleDeviceNumberIsRefusedAtItsOffset) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(start((dir + "/device.trace").c_str(), 0));
  record(EventKind::alloc, 20000, 0, 0x10000000, 1 << 20, BackendId::vmm);
  stop();
  std::ostringstream out, err;
  EXPECT_EQ(run_trace_summary(dir + "/device.trace", 5, {out, err, false}), kExitBadTrace);
  const std::string message = err.str();
  EXPECT_NE(message.find("device number 20000 is impossible"), std::string::npos) << message;
  EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 1) << message;
}

TEST(HostileTrace, SizesNearTwoToThe64AreRefusedNotWrapped) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(start((dir + "/huge.trace").c_str(), 0));
  record(EventKind::alloc, 0, 0, 0x10000000, 3ull << 30, BackendId::vmm);
  record(EventKind::alloc, 0, 0, 0x20000000, ~0ull - 5, BackendId::vmm);
  record(EventKind::free, 0, 0, 0x20000000, ~0ull - 5, BackendId::vmm);
  stop();
  std::ostringstream out, err;
  EXPECT_EQ(run_trace_summary(dir + "/huge.trace", 5, {out, err, false}), kExitBadTrace);
  EXPECT_NE(err.str().find("is larger than any address space"), std::string::npos) << err.str();
  EXPECT_EQ(out.str().find("EiB"), std::string::npos) << out.str();
}

TEST(HostileTrace, AHugeFailedRequestIsReportedTruthfully) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(start((dir + "/failed.trace").c_str(), 0));
  record(EventKind::alloc, 0, 0, 0x10000000, 1ull << 47, BackendId::vmm);  // 128 TiB: the largest block
  record(EventKind::alloc_failed, 0, 0, 0, ~0ull, BackendId::vmm);           // cudaMalloc(SIZE_MAX)
  record(EventKind::free, 0, 0, 0x10000000, 1ull << 47, BackendId::vmm);
  stop();
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_summary(dir + "/failed.trace", 5, {out, err, false}), 0) << err.str();
  EXPECT_NE(out.str().find("allocated      128.00 TiB"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("freed          128.00 TiB"), std::string::npos) << out.str();
  std::ostringstream report_err;
  ASSERT_EQ(run_trace_report(dir + "/failed.trace", dir + "/failed.html", {out, report_err, false}), 0);
  std::vector<unsigned char> bytes = read_bytes(dir + "/failed.html");
  std::string html(bytes.begin(), bytes.end());
  // The page draws its axes from the data it carries: the plot's top is the 128 TiB block, not a
  // wrapped sum (the failed SIZE_MAX request holds no memory).
  EXPECT_NE(html.find("\"peak\":140737488355328,"), std::string::npos) << "the memory plot's axis";
}

TEST(HostileTrace, AllocationsAddingUpPast2To62AreRefused) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(start((dir + "/sum.trace").c_str(), 0));
  for (std::uint64_t i = 0; i <= (format::kMaxTotalBytes >> 47); ++i) {
    record(EventKind::alloc, 0, 0, 0x1000, 1ull << 47, BackendId::vmm);
    record(EventKind::free, 0, 0, 0x1000, 1ull << 47, BackendId::vmm);
  }
  stop();
  std::ostringstream out, err;
  EXPECT_EQ(run_trace_summary(dir + "/sum.trace", 5, {out, err, false}), kExitBadTrace);
  EXPECT_NE(err.str().find("allocations add up to more than"), std::string::npos) << err.str();
}

// Under an address-space limit the host runs out before the backend does: replay says so and does not
// count it as the backend's failure. (In a child process: the limit must not reach the other tests.)
TEST(HostileTrace, ReplayTellsTheHostRunningOutFromTheBackend) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of shadow memory: an address-space limit breaks it; "
                  "the plain build runs this test";
#endif
  std::string dir = make_temp_dir();
  ASSERT_TRUE(start((dir + "/big.trace").c_str(), 0));
  for (std::uint64_t i = 0; i < 16; ++i) record(EventKind::alloc, 0, 0, 0x100000000 * (i + 1), 1ull << 30, BackendId::vmm);
  stop();
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(dir + "/big.trace", &trace, &error)) << error.message;
  for (const BackendInfo* backend : replayable_backends()) {
    ReplayResult free_run = replay_trace(trace, *backend);
    EXPECT_EQ(free_run.host_failed, 0u) << backend->name;
    EXPECT_FALSE(free_run.host_out_of_memory) << backend->name;
    int pipe_fds[2];
    ASSERT_EQ(pipe(pipe_fds), 0);
    pid_t child = fork();
    if (child == 0) {
      std::FILE* statm = std::fopen("/proc/self/statm", "r");
      unsigned long pages = 0;
      if (!statm || std::fscanf(statm, "%lu", &pages) != 1) _exit(3);
      rlimit limit{pages * sysconf(_SC_PAGESIZE) + (512ul << 20), RLIM_INFINITY};
      limit.rlim_max = limit.rlim_cur;
      if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(4);
      ReplayResult r = replay_trace(trace, *backend);
      std::uint64_t answer[3] = {r.failed, r.host_failed, r.host_out_of_memory};
      if (write(pipe_fds[1], answer, sizeof answer) != sizeof answer) _exit(5);
      _exit(0);
    }
    close(pipe_fds[1]);
    std::uint64_t answer[3] = {};
    ssize_t n = read(pipe_fds[0], answer, sizeof answer);
    close(pipe_fds[0]);
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_EQ(n, ssize_t(sizeof answer)) << backend->name << ": child status " << status;
    EXPECT_EQ(answer[0], free_run.failed) << backend->name << " " << answer[1] << " " << answer[2] << ": the host's failures counted as the backend's";
    EXPECT_TRUE(answer[1] > 0 || answer[2]) << backend->name << ": the host ran out without a word";
  }
}

}  // namespace
}  // namespace gpushim::tracing
