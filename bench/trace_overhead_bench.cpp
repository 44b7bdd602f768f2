// What recording costs the program: ns per traced event, without stacks and with 16 frames, measured
// through the same inline tracing::record() the router calls. Targets (issue 4): <= 150 ns without
// stacks, <= 2 us with 16 frames. Prints a table; run it on an idle machine.
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "tracing/trace_recorder.h"

namespace {

constexpr int kEvents = 2000000;        // per thread; many buffer flushes, so their cost is included
constexpr int kStackEvents = 200000;

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// A call chain of some depth, so a 16-frame stack has 16 frames to find.
__attribute__((noinline)) void record_at_depth(int depth, std::uint64_t i) {
  if (depth > 0) {
    record_at_depth(depth - 1, i);
    asm volatile("" ::: "memory");  // keeps the recursion a real call chain
    return;
  }
  gpushim::tracing::record(gpushim::tracing::EventKind::alloc, 0, 0, 0x7f0000000000 + (i << 8), 4096,
                           gpushim::tracing::BackendId::vmm);
}

double measure(int stack_depth, int threads, int events, const std::string& path) {
  if (!gpushim::tracing::start(path.c_str(), stack_depth)) return -1;
  double t0 = now_s();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([events] {
      for (int i = 0; i < events; ++i) record_at_depth(20, std::uint64_t(i));
    });
  for (auto& th : pool) th.join();
  double elapsed = now_s() - t0;
  gpushim::tracing::stop();
  unlink(path.c_str());
  return elapsed * 1e9 / double(events);  // per event, as each thread sees it
}

double measure_disabled(int events) {
  double t0 = now_s();
  for (int i = 0; i < events; ++i) record_at_depth(20, std::uint64_t(i));
  return (now_s() - t0) * 1e9 / double(events);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "/tmp";
  std::string path = dir + "/gpushim_trace_bench_%p.trace";
  double baseline = measure_disabled(kEvents);
  std::printf("%-34s %10s %14s %8s\n", "case", "ns/event", "minus baseline", "target");
  std::printf("%-34s %10.1f %14s %8s\n", "tracing off (20-deep call chain)", baseline, "-", "-");
  struct Case {
    const char* name;
    int stack, threads, events;
    double target;
  } cases[] = {
      {"no stacks, 1 thread", 0, 1, kEvents, 150},
      {"no stacks, 4 threads", 0, 4, kEvents / 4, 150},
      {"16 frames, 1 thread", 16, 1, kStackEvents, 2000},
      {"16 frames, 4 threads", 16, 4, kStackEvents / 4, 2000},
  };
  int failures = 0;
  for (const Case& c : cases) {
    double ns = measure(c.stack, c.threads, c.events, path);
    bool ok = ns >= 0 && ns - baseline <= c.target;
    failures += !ok;
    std::printf("%-34s %10.1f %14.1f %7.0f%s\n", c.name, ns, ns - baseline, c.target, ok ? "" : "  OVER");
  }
  return failures ? 1 : 0;
}
