// The out-of-memory dump format (tracing/oom_dump_writer.h, docs/oom-dump.md) as the tools read it: a
// dump written by the real writer round-trips through the trace reader, `gpushim trace summary` names
// the top holders (by call site with stacks, by block without), a damaged dump is exit code 2 with one
// line, never a crash, and `export --format torch-snapshot` writes a pickle Python can load.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>

#include "tests/trace_test_support.h"
#include "tracing/oom_dump_writer.h"
#include "analysis/pickle_writer.h"
#include "analysis/trace_reader.h"
#include "analysis/trace_tool_commands.h"

// Two "call sites" whose addresses the dump records as frames; noinline so each has its own symbol.
extern "C" __attribute__((noinline)) void oom_dump_test_big_holder() { asm volatile(""); }
extern "C" __attribute__((noinline)) void oom_dump_test_small_holder() { asm volatile(""); }

namespace gpushim::tracing {
namespace {

using namespace testing;

constexpr std::uint64_t kStart = 1'000'000'000;  // gpushim's start, CLOCK_MONOTONIC ns
constexpr std::uint64_t kFailure = kStart + 5'000'000'000ull;

std::uint64_t frame_in(void (*function)()) { return reinterpret_cast<std::uint64_t>(function) + 1; }

// Device 0 holds three big blocks from one site and two small ones from another, then asks for 1 GiB.
bool write_dump(const std::string& path, int stack_depth) {
  OomDumpWriter writer;
  if (!writer.open(path.c_str(), kStart, stack_depth)) return false;
  format::DeviceStateRecord device{};
  device.device = 0;
  device.backend = std::uint8_t(BackendId::tiered);
  device.live_bytes = 3 * 256 * kMiB + 2 * kMiB;
  device.live_blocks = 5;
  device.reserved_bytes = 800 * kMiB;
  device.cached_bytes = 30 * kMiB;
  device.largest_free = 16 * kMiB;
  device.limit = 800 * kMiB;
  device.failed_request = 1024 * kMiB;
  writer.device(device);
  static const std::uint64_t big[] = {frame_in(&oom_dump_test_big_holder)};
  static const std::uint64_t small[] = {frame_in(&oom_dump_test_small_holder)};
  for (int i = 0; i < 3; ++i) {
    DumpBlock b;
    b.address = 0x7f0000000000 + std::uint64_t(i) * 256 * kMiB;
    b.size = 256 * kMiB;
    b.time_ns = kStart + 1'000'000'000ull * std::uint64_t(i + 1);  // ages 4 s, 3 s, 2 s
    b.backend = BackendId::tiered;
    b.frames = big;
    b.frame_count = 1;
    writer.block(b);
  }
  for (int i = 0; i < 2; ++i) {
    DumpBlock b;
    b.address = 0x7e0000000000 + std::uint64_t(i) * kMiB;
    b.size = kMiB;
    b.stream = 0x5150;
    b.async = true;
    b.time_ns = kStart + 4'500'000'000ull;
    b.backend = BackendId::tiered;
    b.frames = small;
    b.frame_count = 1;
    writer.block(b);
  }
  DumpBlock request;
  request.size = 1024 * kMiB;
  request.time_ns = kFailure;
  request.backend = BackendId::tiered;
  writer.failure(request);
  return writer.close();
}

class OomDump : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir(); }
  std::string summary_of(const std::string& path, int* code, std::string* err = nullptr) {
    std::ostringstream out, errors;
    *code = run_trace_summary(path, 5, {out, errors, false});
    if (err) *err = errors.str();
    return out.str();
  }
  std::string dir_;
};

TEST_F(OomDump, RoundTripsThroughTheTraceReader) {
  const std::string path = dir_ + "/dump";
  ASSERT_TRUE(write_dump(path, 4));
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error)) << error.message << " at " << error.offset;
  EXPECT_TRUE(trace.is_oom_dump());
  EXPECT_TRUE(trace.clean_end);
  ASSERT_EQ(trace.device_states.size(), 1u);
  const DeviceSnapshot& d = trace.device_states[0];
  EXPECT_EQ(d.backend, BackendId::tiered);
  EXPECT_EQ(d.live_blocks, 5u);
  EXPECT_EQ(d.reserved, 800 * kMiB);
  EXPECT_EQ(d.largest_free, 16 * kMiB);
  EXPECT_EQ(d.limit, 800 * kMiB);
  EXPECT_EQ(d.failed_request, 1024 * kMiB);
  ASSERT_EQ(trace.events.size(), 6u);
  // Times are since gpushim started; the failing request is the last event.
  EXPECT_EQ(trace.events.front().time_ns, 1'000'000'000u);
  EXPECT_EQ(trace.events.back().kind, EventKind::out_of_memory);
  EXPECT_EQ(trace.events.back().size, 1024 * kMiB);
  EXPECT_EQ(trace.events.back().time_ns, kFailure - kStart);
  int async = 0;
  for (const TraceEvent& e : trace.events)
    if (e.kind == EventKind::alloc_async) {
      ++async;
      EXPECT_EQ(e.stream, 0x5150u);
      ASSERT_EQ(e.frame_count, 1);
      EXPECT_EQ(trace.frames[e.first_frame], frame_in(&oom_dump_test_small_holder));
    }
  EXPECT_EQ(async, 2);
  EXPECT_NE(trace.module_of(frame_in(&oom_dump_test_big_holder)), nullptr) << "the dump has a module map";
}

TEST_F(OomDump, SummaryNamesTheTopHoldersByCallSite) {
  const std::string path = dir_ + "/dump";
  ASSERT_TRUE(write_dump(path, 4));
  int code = -1;
  const std::string out = summary_of(path, &code);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("out-of-memory dump: device 0 (tiered) could not allocate 1.00 GiB"), std::string::npos) << out;
  EXPECT_NE(out.find("800.00 MiB"), std::string::npos) << out;  // reserved and limit
  const std::size_t holders = out.find("top holders at the failure, by call site");
  ASSERT_NE(holders, std::string::npos) << out;
  // The big site first, with its 768 MiB in 3 blocks, then the small one.
  const std::size_t first = out.find("#1   768.00 MiB   in      3 blocks", holders);
  const std::size_t second = out.find("#2   2.00 MiB     in      2 blocks", holders);
  EXPECT_NE(first, std::string::npos) << out;
  EXPECT_NE(second, std::string::npos) << out;
  EXPECT_LT(first, second);
  // Named by function where binutils can read this test's symbols; the module offset otherwise.
  const bool have_addr2line = std::system("command -v addr2line >/dev/null 2>&1") == 0;
  if (have_addr2line) {
    EXPECT_NE(out.find("oom_dump_test_big_holder", holders), std::string::npos) << out;
  }
  // The largest blocks with their age at the failure: the oldest 256 MiB block is 4 s old.
  EXPECT_NE(out.find("age 4.00 s"), std::string::npos) << out;
}

TEST_F(OomDump, WithoutStacksTheSummaryListsTheLargestBlocks) {
  const std::string path = dir_ + "/dump";
  ASSERT_TRUE(write_dump(path, 0));
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(path, &trace, &error));
  for (const TraceEvent& e : trace.events) EXPECT_EQ(e.frame_count, 0);
  int code = -1;
  const std::string out = summary_of(path, &code);
  ASSERT_EQ(code, 0);
  EXPECT_NE(out.find("no stacks in this dump: set GPUSHIM_OOM_DUMP_STACK"), std::string::npos) << out;
  EXPECT_NE(out.find("#1   256.00 MiB   device 0  at 0x7f0000000000"), std::string::npos) << out;
  EXPECT_NE(out.find("stream 0x5150"), std::string::npos) << out;
}

TEST_F(OomDump, DamagedDumpsAreExitTwoWithOneLineNeverACrash) {
  const std::string good_path = dir_ + "/dump";
  ASSERT_TRUE(write_dump(good_path, 4));
  const std::vector<unsigned char> good = read_bytes(good_path);
  const std::string bad_path = dir_ + "/damaged";
  std::mt19937 random(14);
  int unreadable = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<unsigned char> bytes = good;
    if (trial % 3 == 0) {
      bytes.resize(random() % bytes.size());
    } else {
      bytes[random() % bytes.size()] ^= static_cast<unsigned char>(1u << (random() % 8));
    }
    write_bytes(bad_path, bytes);
    for (const char* command : {"summary", "export"}) {
      std::ostringstream out, err;
      const int code = std::string(command) == "summary"
                           ? run_trace_summary(bad_path, 5, {out, err, false})
                           : run_trace_export(bad_path, "torch-snapshot", dir_ + "/out.pickle", {out, err, false});
      if (code == 0) continue;  // a cut after a whole chunk, or a flip in a byte nothing reads
      ASSERT_EQ(code, kExitBadTrace) << command << " trial " << trial << ": " << err.str();
      const std::string message = err.str();
      EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 1) << message;
      EXPECT_NE(message.find("byte offset"), std::string::npos) << message;
      ++unreadable;
    }
  }
  EXPECT_GT(unreadable, 300) << "most damage must be detected";
}

TEST_F(OomDump, TorchSnapshotExportLoadsInPython) {
  const std::string path = dir_ + "/dump";
  ASSERT_TRUE(write_dump(path, 4));
  const std::string pickle = dir_ + "/snapshot.pickle";
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_export(path, "torch-snapshot", pickle, {out, err, false}), 0) << err.str();
  ASSERT_FALSE(read_bytes(pickle).empty());
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 here to load the pickle";
  // The keys memory_viz reads (torch/cuda/_memory_viz.py: segsum, trace, _write_blocks; MemoryViz.js).
  const std::string check = dir_ + "/check.py";
  std::ofstream(check) << R"(import pickle, sys
s = pickle.load(open(sys.argv[1], 'rb'))
segs = s['segments']
assert len(segs) == 5, len(segs)
for seg in segs:
    assert seg['device'] == 0 and seg['total_size'] > 0
    active = sum(b['size'] for b in seg['blocks'] if b['state'] == 'active_allocated')
    assert active == seg['total_size']
    for b in seg['blocks']:
        assert b['requested_size'] <= b['size']
        for f in b['frames']:
            assert isinstance(f['name'], str) and isinstance(f['filename'], str) and isinstance(f['line'], int)
t = s['device_traces']
assert len(t) == 1
actions = [e['action'] for e in t[0]]
assert actions == ['alloc'] * 5 + ['oom'], actions
oom = t[0][-1]
assert oom['size'] == 1 << 30 and oom['device_free'] == 16 << 20
big = [e for e in t[0] if e['action'] == 'alloc' and e['size'] == 256 << 20]
assert len(big) == 3 and all(len(e['frames']) == 1 for e in big)
assert big[0]['frames'][0] is big[1]['frames'][0]  # one frame object, shared by reference
assert big[0]['addr'] == 0x7f0000000000 and big[0]['time_us'] > 0
print('snapshot ok')
)";
  const std::string command = "python3 " + check + " " + pickle + " > " + dir_ + "/py.out 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream result(dir_ + "/py.out");
  const std::string text((std::istreambuf_iterator<char>(result)), std::istreambuf_iterator<char>());
  EXPECT_EQ(status, 0) << text;
  EXPECT_NE(text.find("snapshot ok"), std::string::npos) << text;
}

TEST_F(OomDump, TorchSnapshotOfARecordedTracePairsFrees) {
  const std::string path = dir_ + "/synthetic.trace";
  ASSERT_TRUE(write_synthetic_trace(path, 0));
  const std::string pickle = dir_ + "/synthetic.pickle";
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_export(path, "torch-snapshot", pickle, {out, err, false}), 0) << err.str();
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 here to load the pickle";
  const std::string command = "python3 -c \"import pickle,sys; s=pickle.load(open(sys.argv[1],'rb')); "
                              "a=[e['action'] for e in s['device_traces'][0]]; "
                              "assert a.count('alloc')==4 and a.count('free_completed')==3 and a.count('oom')==1, a; "
                              "assert [g['total_size'] for g in s['segments']]==[512], s['segments']\" " + pickle;
  EXPECT_EQ(std::system(command.c_str()), 0);
}

TEST_F(OomDump, PickleWriterValuesLoadInPythonAsWritten) {
  PickleWriter w;
  w.begin_list();
  for (std::int64_t v : {std::int64_t{0}, std::int64_t{255}, std::int64_t{-1}, std::int64_t{INT32_MAX},
                         std::int64_t{INT32_MIN}, std::int64_t{1} << 31, -(std::int64_t{1} << 31) - 1,
                         std::int64_t{1} << 40, -(std::int64_t{1} << 40), std::int64_t{128} << 32, INT64_MAX, INT64_MIN})
    w.integer(v);
  for (std::uint64_t v : {std::uint64_t{1} << 63, ~std::uint64_t{0}, std::uint64_t{0x7f0000000000}}) w.unsigned_integer(v);
  w.string("caf\xc3\xa9");
  w.boolean(true);
  w.none();
  w.begin_tuple();
  w.integer(1);
  w.end_tuple();
  w.begin_dict();
  w.string("k");
  w.begin_list();
  w.end_list();
  w.end_dict();
  w.end_list();
  const std::string bytes = w.finish();
  write_bytes(dir_ + "/values.pickle", std::vector<unsigned char>(bytes.begin(), bytes.end()));
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 here to load the pickle";
  const std::string command =
      "python3 -c \"import pickle,sys; v=pickle.load(open(sys.argv[1],'rb')); "
      "e=[0,255,-1,2**31-1,-2**31,2**31,-2**31-1,2**40,-2**40,128<<32,2**63-1,-2**63,2**63,2**64-1,0x7f0000000000,"
      "'caf??',True,None,(1,),{'k':[]}]; assert v==e, v\" " + dir_ + "/values.pickle";
  EXPECT_EQ(std::system(command.c_str()), 0);
}

}  // namespace
}  // namespace gpushim::tracing
