// `gpushim trace replay --gpu-lag-events/--gpu-lag-us`: the fenced-free model. Without a lag the backend
// sees exactly the calls of a replay where every free takes effect at once; with one, the bytes held
// back are those counted by hand on traces built for it; async frees come back at once on their stream.
#include <gtest/gtest.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <memory>
#include <sstream>
#include <unordered_map>

#include "analysis/trace_replay.h"
#include "analysis/trace_tool_commands.h"
#include "router/free_fence_queue.h"  // kFreesPerIdleCheck
#include "tests/forwarding_allocator.h"
#include "tests/trace_test_support.h"
#include "tools/trace_commands.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

constexpr std::uint64_t kBlock = 64 * kMiB;
constexpr std::uint64_t kNoEnd = ~std::uint64_t{0};
constexpr std::uint64_t kPerThreadStream = 0x2;  // CU_STREAM_PER_THREAD

TraceEvent event(EventKind kind, std::uint64_t time_ns, std::uint64_t address, std::uint64_t size,
                 std::uint64_t stream = 0) {
  TraceEvent e{};
  e.time_ns = time_ns;
  e.stream = stream;
  e.address = address;
  e.size = size;
  e.kind = kind;
  return e;
}

// `pairs` times: allocate a block of `size` at a new address, free it. The calls are 1 us apart, so
// the k-th allocation is call 2k at 2k us and its free is call 2k+1 at 2k+1 us.
Trace alloc_free_loop(int pairs, std::uint64_t size = kBlock, EventKind alloc = EventKind::alloc,
                      EventKind free = EventKind::free, std::uint64_t alloc_stream = 0,
                      std::uint64_t free_stream = 0) {
  Trace trace;
  for (int k = 0; k < pairs; ++k) {
    const std::uint64_t address = 0x100000000ull + std::uint64_t(k) * 0x10000000ull;
    trace.events.push_back(event(alloc, std::uint64_t(2 * k) * 1000, address, size, alloc_stream));
    trace.events.push_back(event(free, std::uint64_t(2 * k + 1) * 1000, address, size, free_stream));
  }
  return trace;
}

std::uint64_t ceil_half(std::uint64_t n) { return (n + 1) / 2; }

// A backend that logs every call into `g_calls` and serves it with tiered's algorithm.
struct Call {
  bool allocate;
  std::uint64_t bytes;
  void* pointer;
  bool operator==(const Call& o) const { return allocate == o.allocate && bytes == o.bytes && pointer == o.pointer; }
};
std::vector<Call>* g_calls = nullptr;

class RecordingAllocator : public gpushim::testing::ForwardingAllocator {
 public:
  using gpushim::testing::ForwardingAllocator::ForwardingAllocator;
  const char* name() const noexcept override { return "recording"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override {
    void* p = inner().allocate(bytes, stream);
    g_calls->push_back({true, bytes, p});
    return p;
  }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override {
    g_calls->push_back({false, bytes, p});
    inner().deallocate(p, bytes, stream);
  }
};

std::unique_ptr<Allocator> recording_tiered(MemoryProvider& provider, const Settings& settings) {
  return std::make_unique<RecordingAllocator>(find_backend("tiered")->factory(provider, settings));
}

const BackendInfo kRecording{"recording", BackendId::unknown, &recording_tiered, {}, "tiered, with its calls logged"};

std::vector<Call> calls_of(const Trace& trace, const GpuLag& lag) {
  std::vector<Call> calls;
  g_calls = &calls;
  replay_trace(trace, kRecording, {}, lag);
  g_calls = nullptr;
  return calls;
}

// What a replay without the lag model does, written out from the trace alone: each allocation is one
// allocate, each free of a live block one deallocate right there, the blocks still live go back at the end.
void expect_frees_at_once(const Trace& trace, const std::vector<Call>& calls) {
  std::unordered_map<std::uint64_t, Call> live;
  std::size_t next = 0;
  for (const TraceEvent& e : trace.events) {
    if (is_free(e.kind)) {
      auto it = live.find(block_key(e));
      if (it == live.end()) continue;
      ASSERT_LT(next, calls.size());
      EXPECT_EQ(calls[next], (Call{false, it->second.bytes, it->second.pointer})) << "call " << next;
      ++next;
      live.erase(it);
    } else if (is_alloc(e.kind)) {
      ASSERT_EQ(live.count(block_key(e)), 0u) << "the test traces lose no free";
      ASSERT_LT(next, calls.size());
      ASSERT_TRUE(calls[next].allocate) << "call " << next;
      ASSERT_EQ(calls[next].bytes, e.size) << "call " << next;
      live.emplace(block_key(e), calls[next]);
      ++next;
    }
  }
  EXPECT_EQ(calls.size() - next, live.size()) << "only the blocks never freed are given back at the end";
  for (; next < calls.size(); ++next) EXPECT_FALSE(calls[next].allocate);
}

Trace bundled_or_loop() {
  for (const char* name : {"torch_transformer.trace.zst", "torch_transformer.trace"}) {
    Trace trace;
    TraceError error;
    if (read_trace(std::string(GPUSHIM_TEST_DATA_DIR) + "/" + name, &trace, &error)) return trace;
  }
  return alloc_free_loop(100);
}

// Lag 0 is the replay of frees that take effect at once, call for call, so every number it reports is
// the one a replay without the model reports.
TEST(TraceReplayLag, LagZeroMakesTheCallsOfFreesAtOnce) {
  const Trace trace = bundled_or_loop();
  expect_frees_at_once(trace, calls_of(trace, GpuLag{}));
}

// A lag shorter than every gap between calls defers each free to the next call, which changes nothing
// the backend can see: the deferred path, not only the zero path, reproduces the ideal replay.
TEST(TraceReplayLag, LagShorterThanEveryGapChangesNothing) {
  const Trace trace = alloc_free_loop(50);
  expect_frees_at_once(trace, calls_of(trace, GpuLag{0, 1}));
  for (const BackendInfo* b : replayable_backends()) {
    ReplayResult ideal = replay_trace(trace, *b);
    ReplayResult lagged = replay_trace(trace, *b, {}, GpuLag{0, 1});
    EXPECT_EQ(lagged.peak_reserved, ideal.peak_reserved) << b->name;
    EXPECT_EQ(lagged.peak_live, ideal.peak_live) << b->name;
    EXPECT_EQ(lagged.operations, ideal.operations) << b->name;
    EXPECT_EQ(lagged.peak_waiting, 0u) << b->name;
  }
}

// alloc, free, alloc, free...: a free at call 2k+1 is reusable from call 2k+2+N, so the allocation at
// call 2m finds the blocks of pairs m-1 ... m-ceil(N/2) still waiting.
TEST(TraceReplayLag, EventLagHoldsBackTheBlocksCountedByHand) {
  constexpr int kPairs = 40;
  const Trace trace = alloc_free_loop(kPairs);
  for (const BackendInfo* b : replayable_backends()) {
    const ReplayResult ideal = replay_trace(trace, *b);
    EXPECT_EQ(ideal.peak_waiting, 0u);
    for (std::uint64_t lag : {0ull, 1ull, 2ull, 3ull, 7ull, 20ull}) {
      SCOPED_TRACE(std::string(b->name) + ", lag " + std::to_string(lag) + " calls");
      const ReplayResult r = replay_trace(trace, *b, {}, GpuLag{lag, 0});
      const std::uint64_t waiting_blocks = ceil_half(lag);
      EXPECT_EQ(r.peak_live, kBlock);
      EXPECT_EQ(r.peak_waiting, waiting_blocks * kBlock);
      EXPECT_GE(r.peak_reserved, (waiting_blocks + 1) * kBlock);
      // No backend needs more than its ideal footprint for each block held at once.
      EXPECT_LE(r.peak_reserved, (waiting_blocks + 1) * ideal.peak_reserved);
      EXPECT_EQ(r.failed, 0u);
      EXPECT_EQ(r.operations, 2u * kPairs);
      EXPECT_EQ(r.provider_misuse, 0u);
    }
  }
}

// The same loop in time: a free at 2k+1 us with a lag of T us is reusable from 2k+1+T us, so the
// allocation at 2m us finds floor(T/2) blocks waiting.
TEST(TraceReplayLag, TimeLagHoldsBackTheBlocksCountedByHand) {
  const Trace trace = alloc_free_loop(40);
  const BackendInfo& vmm = *find_backend("vmm");
  for (std::uint64_t us : {0ull, 1ull, 2ull, 3ull, 4ull, 9ull}) {
    SCOPED_TRACE("lag " + std::to_string(us) + " us");
    const ReplayResult r = replay_trace(trace, vmm, {}, GpuLag{0, us});
    EXPECT_EQ(r.peak_waiting, us / 2 * kBlock);
    EXPECT_GE(r.peak_reserved, (us / 2 + 1) * kBlock);
  }
  // Both lags: a block waits for the longer. 3 calls alone hold 2 blocks, 9 us alone 4.
  EXPECT_EQ(replay_trace(trace, vmm, {}, GpuLag{3, 9}).peak_waiting, 4 * kBlock);
  EXPECT_EQ(replay_trace(trace, vmm, {}, GpuLag{9, 3}).peak_waiting, 5 * kBlock);
}

// A lag longer than the trace: nothing is reused, every block is given back once, at the end, and the
// arithmetic at the top of the range does not wrap into "reusable at once".
TEST(TraceReplayLag, LagLongerThanTheTraceReusesNothing) {
  constexpr int kPairs = 12;
  const Trace trace = alloc_free_loop(kPairs);
  for (const GpuLag& lag : {GpuLag{1000, 0}, GpuLag{kNoEnd, 0}, GpuLag{0, kNoEnd}, GpuLag{kNoEnd, kNoEnd}}) {
    for (const BackendInfo* b : replayable_backends()) {
      SCOPED_TRACE(std::string(b->name) + ", lag " + std::to_string(lag.events) + " calls, " +
                   std::to_string(lag.microseconds) + " us");
      const ReplayResult r = replay_trace(trace, *b, {}, lag);
      EXPECT_EQ(r.peak_waiting, (kPairs - 1) * kBlock);
      EXPECT_GE(r.peak_reserved, kPairs * kBlock);
      EXPECT_EQ(r.operations, 2u * kPairs);
      EXPECT_EQ(r.provider_misuse, 0u);
    }
  }
  std::vector<Call> calls = calls_of(trace, GpuLag{kNoEnd, 0});
  ASSERT_EQ(calls.size(), 2u * kPairs);
  for (int k = 0; k < kPairs; ++k) EXPECT_TRUE(calls[k].allocate) << k;
  for (int k = kPairs; k < 2 * kPairs; ++k) EXPECT_FALSE(calls[k].allocate) << k;
}

// gpushim's per-stream free lists: an async-freed block is handed out again at once to an async
// allocation on the same stream of the same rounded size, however long the GPU lags.
TEST(TraceReplayLag, AsyncFreesComeBackAtOnceOnTheirStream) {
  constexpr int kPairs = 30;
  const GpuLag lag{kNoEnd, 0};
  const BackendInfo& tiered = *find_backend("tiered");
  auto replay = [&](const Trace& trace) { return replay_trace(trace, tiered, {}, lag); };
  const ReplayResult ideal = replay_trace(alloc_free_loop(kPairs), tiered);

  const ReplayResult same = replay(alloc_free_loop(kPairs, kBlock, EventKind::alloc_async, EventKind::free_async, 7, 7));
  EXPECT_EQ(same.reused_on_stream, kPairs - 1u);
  EXPECT_EQ(same.peak_waiting, 0u);
  EXPECT_EQ(same.peak_reserved, ideal.peak_reserved);
  EXPECT_EQ(same.operations, 2u) << "one allocate, one deallocate at the end";

  // Stream 0 in an async call is the legacy stream, as the router reads it.
  EXPECT_EQ(replay(alloc_free_loop(kPairs, kBlock, EventKind::alloc_async, EventKind::free_async, 1, 0))
                .reused_on_stream,
            kPairs - 1u);

  // Not on another stream, not for a plain cuMemAlloc, not from the per-thread stream (its frees are
  // fenced like cuMemFree's), not from a cuMemFree.
  for (const Trace& trace :
       {alloc_free_loop(kPairs, kBlock, EventKind::alloc_async, EventKind::free_async, 8, 7),
        alloc_free_loop(kPairs, kBlock, EventKind::alloc, EventKind::free_async, 0, 7),
        alloc_free_loop(kPairs, kBlock, EventKind::alloc_async, EventKind::free_async, kPerThreadStream,
                        kPerThreadStream),
        alloc_free_loop(kPairs, kBlock, EventKind::alloc_async, EventKind::free, 7, 0)}) {
    const ReplayResult r = replay(trace);
    EXPECT_EQ(r.reused_on_stream, 0u);
    EXPECT_EQ(r.peak_waiting, (kPairs - 1) * kBlock);
  }
}

// The free list matches by the router's rounded block size (kMinAlignment), not the exact request.
TEST(TraceReplayLag, AsyncReuseMatchesTheRoundedSize) {
  const BackendInfo& vmm = *find_backend("vmm");
  const GpuLag lag{kNoEnd, 0};
  auto trace_of = [](std::uint64_t second_size) {
    Trace trace;
    trace.events.push_back(event(EventKind::alloc_async, 0, 0x100000000ull, kBlock, 7));
    trace.events.push_back(event(EventKind::free_async, 1000, 0x100000000ull, kBlock, 7));
    trace.events.push_back(event(EventKind::alloc_async, 2000, 0x200000000ull, second_size, 7));
    trace.events.push_back(event(EventKind::free_async, 3000, 0x200000000ull, second_size, 7));
    return trace;
  };
  const ReplayResult smaller = replay_trace(trace_of(kBlock - kMinAlignment + 1), vmm, {}, lag);
  EXPECT_EQ(smaller.reused_on_stream, 1u);
  EXPECT_EQ(smaller.peak_live, kBlock);
  EXPECT_EQ(smaller.provider_misuse, 0u);
  EXPECT_EQ(replay_trace(trace_of(kBlock + 1), vmm, {}, lag).reused_on_stream, 0u);
  EXPECT_EQ(replay_trace(trace_of(kBlock - kMinAlignment), vmm, {}, lag).reused_on_stream, 0u);
}

// Failed allocations and OOM events are not the program's memory: the lag leaves them as they were.
TEST(TraceReplayLag, FailedAllocationsAreUntouched) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(write_synthetic_trace(dir + "/synthetic.trace"));
  Trace trace;
  TraceError error;
  ASSERT_TRUE(read_trace(dir + "/synthetic.trace", &trace, &error)) << error.message;
  for (const BackendInfo* b : replayable_backends()) {
    const ReplayResult ideal = replay_trace(trace, *b);
    const ReplayResult lagged = replay_trace(trace, *b, {}, GpuLag{kNoEnd, 0});
    EXPECT_EQ(lagged.failed, ideal.failed) << b->name;
    EXPECT_EQ(lagged.peak_live, kSyntheticPeakLive) << b->name;
    EXPECT_EQ(lagged.peak_waiting, 1 * kMiB) << b->name << ": A waits while C and D are allocated";
  }
}

TEST(TraceReplayLag, TableKeepsItsFormatWithoutALagAndAddsPeakWaitingWithOne) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(write_synthetic_trace(dir + "/synthetic.trace"));
  std::ostringstream out, err;
  ASSERT_EQ(run_trace_replay(dir + "/synthetic.trace", "vmm", {out, err, false}), 0) << err.str();
  const std::string plain = out.str();
  EXPECT_EQ(plain.substr(0, plain.find('\n') + 1),
            "backend       peak reserved      peak live  fragmentation   failed      ns/op\n");
  EXPECT_EQ(plain.find("waiting"), std::string::npos);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), '\n'), 2);

  out.str("");
  ASSERT_EQ(run_trace_replay(dir + "/synthetic.trace", "vmm", {out, err, false}, GpuLag{3, 250}), 0) << err.str();
  std::istringstream lines(out.str());
  std::string title, header, row;
  std::getline(lines, title);
  std::getline(lines, header);
  std::getline(lines, row);
  EXPECT_EQ(title.rfind("GPU lag 3 allocation/free calls and 250 us: ", 0), 0u) << title;
  EXPECT_EQ(header, "backend       peak reserved      peak live  fragmentation   failed      ns/op   peak waiting");
  EXPECT_EQ(row.rfind("vmm ", 0), 0u) << row;
  EXPECT_EQ(row.substr(row.size() - 15), "       1.00 MiB") << row;

  out.str("");
  ASSERT_EQ(run_trace_replay(dir + "/synthetic.trace", "vmm", {out, err, false}, GpuLag{0, 0, true}), 0) << err.str();
  EXPECT_EQ(out.str().rfind("GPU lag 0, fence batches: ", 0), 0u) << out.str();
  EXPECT_NE(out.str().find("peak waiting\n"), std::string::npos) << out.str();
}

// --fence-batches, 1 MiB blocks, one thread: a batch closes at its 64th free (64 MiB), and the poll at the
// next close gives it back. Without a lag the allocation just before the second close finds the first
// batch and 63 open frees waiting: 127 blocks. A lag of 200 calls outlasts one more batch: 191.
TEST(TraceReplayLag, FenceBatchesHoldBatchesCountedByHand) {
  const BackendInfo& vmm = *find_backend("vmm");
  const Trace trace = alloc_free_loop(256, kMiB);
  const ReplayResult none = replay_trace(trace, vmm, {}, GpuLag{0, 0, true});
  EXPECT_EQ(none.peak_waiting, 127 * kMiB);
  EXPECT_GE(none.peak_reserved, 128 * kMiB);
  EXPECT_EQ(none.operations, 512u);
  EXPECT_EQ(replay_trace(trace, vmm, {}, GpuLag{200, 0, true}).peak_waiting, 191 * kMiB);
  // Small blocks close a batch at 256 blocks: 511 wait at most.
  constexpr std::uint64_t kSmall = 4096;
  EXPECT_EQ(replay_trace(alloc_free_loop(600, kSmall), vmm, {}, GpuLag{0, 0, true}).peak_waiting, 511 * kSmall);
}

// Each thread has its own batch: two threads freeing in turn keep two open batches. Just before thread
// 1's second close: thread 2's first batch (closed after thread 1's, so not yet polled) and 63 open
// frees of each thread wait, 190 blocks.
TEST(TraceReplayLag, FenceBatchesArePerThread) {
  Trace trace = alloc_free_loop(512, kMiB);
  for (std::size_t i = 0; i < trace.events.size(); ++i) trace.events[i].thread_id = 1 + (i / 2) % 2;
  EXPECT_EQ(replay_trace(trace, *find_backend("vmm"), {}, GpuLag{0, 0, true}).peak_waiting, 190 * kMiB);
}

// Async frees on stream S wait in S's list, where async allocations on S take them back at once; a list
// that is not drained closes like a batch. The per-thread stream's async frees join the thread's batch.
TEST(TraceReplayLag, FenceBatchesKeepStreamListsReusableOnTheirStream) {
  const BackendInfo& vmm = *find_backend("vmm");
  const GpuLag batches{0, 0, true};
  const ReplayResult same =
      replay_trace(alloc_free_loop(256, kMiB, EventKind::alloc_async, EventKind::free_async, 7, 7), vmm, {}, batches);
  EXPECT_EQ(same.reused_on_stream, 255u);
  EXPECT_EQ(same.peak_waiting, 0u);
  for (const Trace& trace : {alloc_free_loop(256, kMiB, EventKind::alloc_async, EventKind::free_async, 8, 7),
                             alloc_free_loop(256, kMiB, EventKind::alloc_async, EventKind::free_async,
                                             kPerThreadStream, kPerThreadStream)}) {
    const ReplayResult r = replay_trace(trace, vmm, {}, batches);
    EXPECT_EQ(r.reused_on_stream, 0u);
    EXPECT_EQ(r.peak_waiting, 127 * kMiB);
    EXPECT_EQ(r.operations, 512u);
  }
}

// A lone block above a batch's bytes stays on its stream's list, as in the router: a loop of 128 MiB
// async pairs on one stream reuses the same block and leaves nothing waiting for a fence.
TEST(TraceReplayLag, ALoneLargeAsyncBlockStaysReusableOnItsStream) {
  const ReplayResult r = replay_trace(alloc_free_loop(64, 128 * kMiB, EventKind::alloc_async, EventKind::free_async, 7, 7),
                                      *find_backend("vmm"), {}, GpuLag{0, 0, true});
  EXPECT_EQ(r.reused_on_stream, 63u);
  EXPECT_EQ(r.peak_waiting, 0u);
}

// A quiet stream's list is closed by the idle checks once it had no free for the default
// GPUSHIM_STREAM_LIST_IDLE (1 s), as in the router: a 128 MiB block freed on stream 7, then 8,192
// cuMemFree pairs (two idle checks of the thread) over `span`. Over 4 s, the second check closes the
// list and the next allocation on 7 gets a fresh block; over 0.5 s the block is still the stream's.
TEST(TraceReplayLag, AQuietStreamsListClosesAfterTheIdleTime) {
  for (const std::uint64_t span_ns : {std::uint64_t{4'000'000'000}, std::uint64_t{500'000'000}}) {
    Trace trace;
    const std::uint64_t big = 128 * kMiB, parked = 0x100000000ull;
    trace.events.push_back(event(EventKind::alloc_async, 0, parked, big, 7));
    trace.events.push_back(event(EventKind::free_async, 1000, parked, big, 7));
    const int pairs = 2 * static_cast<int>(gpushim::kFreesPerIdleCheck);
    for (int k = 0; k < pairs; ++k) {
      const std::uint64_t t = 2000 + span_ns / pairs * k;
      trace.events.push_back(event(EventKind::alloc, t, 0x200000000ull, 4096));
      trace.events.push_back(event(EventKind::free, t + 1, 0x200000000ull, 4096));
    }
    trace.events.push_back(event(EventKind::alloc_async, span_ns + 3000, parked + big, big, 7));
    const ReplayResult r = replay_trace(trace, *find_backend("vmm"), {}, GpuLag{0, 0, true});
    EXPECT_EQ(r.reused_on_stream, span_ns > 2'000'000'000 ? 0u : 1u) << "span " << span_ns << " ns";
  }
}

// The options take whole numbers only; anything else is a usage error (exit 64 in `gpushim`) whose one
// message names the option and what it accepts, never the value (which may be any bytes).
TEST(TraceReplayLag, CommandLineRejectsHostileValues) {
  std::string dir = make_temp_dir();
  ASSERT_TRUE(write_synthetic_trace(dir + "/synthetic.trace"));
  auto parse = [&](const std::string& option, const std::string& value, std::string* message) {
    CLI::App app("gpushim");
    tools::add_trace_commands(app);
    std::vector<std::string> args{"gpushim", "trace", "replay", dir + "/synthetic.trace", "--backend", "vmm",
                                  option, value};
    std::vector<const char*> argv;
    for (auto& a : args) argv.push_back(a.c_str());
    ::testing::internal::CaptureStdout();
    try {
      app.parse(int(argv.size()), const_cast<char**>(argv.data()));
    } catch (const CLI::ValidationError& e) {
      ::testing::internal::GetCapturedStdout();
      *message = e.what();
      return false;
    }
    const std::string table = ::testing::internal::GetCapturedStdout();
    *message = table;
    return true;
  };
  std::string message;
  for (const char* option : {"--gpu-lag-events", "--gpu-lag-us"}) {
    for (const char* value : {"x", "-1", "+1", "1.5", "1e3", "5k", " 5", "5 ", "", "0x10", "18446744073709551616",
                              "99999999999999999999999", "\x1b[2J\n"}) {
      EXPECT_FALSE(parse(option, value, &message)) << option << " " << value;
      const std::string what = std::string(option) == "--gpu-lag-us" ? "microseconds" : "allocation/free calls";
      EXPECT_EQ(message, std::string(option) + ": a whole number of " + what + ", 0 to 18446744073709551615");
    }
    EXPECT_TRUE(parse(option, "18446744073709551615", &message)) << option;
    EXPECT_NE(message.find("peak waiting"), std::string::npos) << message;
    EXPECT_TRUE(parse(option, "0", &message)) << option;
    EXPECT_EQ(message.find("peak waiting"), std::string::npos) << "a zero lag is no lag: " << message;
  }
}

}  // namespace
}  // namespace gpushim::tracing
