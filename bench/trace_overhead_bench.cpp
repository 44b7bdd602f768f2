// What recording costs the program: ns per traced event, without stacks and with 16 frames, measured
// through the same inline tracing::record() the router calls. Targets: <= 150 ns without
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

// CPU time of the calling thread: on a shared or oversubscribed machine, wall time would count the
// time other programs (or our other threads) held the core.
double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Mean CPU ns per event over `threads` threads, each recording `events` events from `depth` frames down.
double run_threads(int threads, int events, int depth) {
  std::vector<double> per_thread(std::size_t(threads), 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([events, depth, &per_thread, t] {
      double t0 = thread_cpu_s();
      for (int i = 0; i < events; ++i) record_at_depth(depth, std::uint64_t(i));
      per_thread[std::size_t(t)] = (thread_cpu_s() - t0) * 1e9 / double(events);
    });
  for (auto& th : pool) th.join();
  double sum = 0;
  for (double v : per_thread) sum += v;
  return sum / threads;
}

double measure(int stack_depth, int threads, int events, int depth, const std::string& path) {
  if (!gpushim::tracing::start(path.c_str(), stack_depth)) return -1;
  double ns = run_threads(threads, events, depth);
  gpushim::tracing::stop();
  unlink(path.c_str());
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : "/tmp";
  std::string path = dir + "/gpushim_trace_bench_%p.trace";
  // The program's own cost of reaching record() (a call chain 20 deep, tracing off), subtracted below.
  constexpr int kShallow = 0, kDeep = 20;
  double baseline[2] = {run_threads(1, kEvents, kShallow), run_threads(1, kEvents, kDeep)};
  std::printf("CPU time per event of the recording thread (CLOCK_THREAD_CPUTIME_ID)\n");
  std::printf("%-34s %10s %14s %8s\n", "case", "ns/event", "minus baseline", "target");
  std::printf("%-34s %10.1f %14s %8s\n", "tracing off, direct call", baseline[0], "-", "-");
  std::printf("%-34s %10.1f %14s %8s\n", "tracing off, 20-deep call chain", baseline[1], "-", "-");
  struct Case {
    const char* name;
    int stack, threads, events, depth;
    double target;
  } cases[] = {
      {"no stacks, 1 thread", 0, 1, kEvents, kShallow, 150},
      {"no stacks, 4 threads", 0, 4, kEvents / 4, kShallow, 150},
      {"16 frames, 1 thread", 16, 1, kStackEvents, kDeep, 2000},
      {"16 frames, 4 threads", 16, 4, kStackEvents / 4, kDeep, 2000},
  };
  int failures = 0;
  for (const Case& c : cases) {
    double ns = measure(c.stack, c.threads, c.events, c.depth, path);
    double base = baseline[c.depth == kDeep];
    bool ok = ns >= 0 && ns - base <= c.target;
    failures += !ok;
    std::printf("%-34s %10.1f %14.1f %7.0f%s\n", c.name, ns, ns - base, c.target, ok ? "" : "  OVER");
  }
  return failures ? 1 : 0;
}
