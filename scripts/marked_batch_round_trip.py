#!/usr/bin/env python3
"""Makes a copy of the tree that times its marked batches (router/marked_batches.h), for measuring how long
a fenced block takes to come back to its thread; never for a library anyone runs.

    git archive HEAD | tar x -C COPY && scripts/marked_batch_round_trip.py COPY
    (build COPY's libgpushim.so, then run a program under it with GPUSHIM_RT_COUNTS=1)

At exit the copy prints, for the batches that came back by their marks: how many, their blocks, and the
means of open -> close (a thread's first free into the batch to the free that closed it and marked the
streams), close -> returned (to the check that found every mark passed and moved the batch to the
thread's list) and of the checks it took; the batches taken otherwise (a turn to ordered, memory
pressure, an exit) and their close -> taken; and the cumulative share of close -> returned below 2, 4,
8, ... 16384 us. A batch's open and close cost a clock read each, a check one increment. Combines with
scripts/activity_lock_counts.py on the same copy. docs/perf-notes.md, "Forty-ninth session", has what
it showed. Refuses a directory with a .git (the repository itself).
"""
from instrumented_copy import copy_from_argv, edit as edit_copy

TOOL = 'marked_batch_round_trip.py'
d = copy_from_argv(TOOL, 'router/marked_batches.cpp')


def edit(path, old, new):
    edit_copy(TOOL, d, path, old, new)


edit('router/free_fence_queue.h', '''  bool add(const FreedBlock& block, FenceContext context) {
    if (blocks_.empty()) {
      context_ = context;''', '''  bool add(const FreedBlock& block, FenceContext context) {
    if (blocks_.empty()) {
      opened_ns_ = monotonic_ns();
      context_ = context;''')
edit('router/free_fence_queue.h', '''  std::vector<FreedBlock> take() noexcept {
    bytes_ = 0;''', '''  std::vector<FreedBlock> take() noexcept {
    rt_last_opened_ns() = opened_ns_;
    bytes_ = 0;''')
edit('router/free_fence_queue.h', '''  std::vector<FreedBlock> blocks_;
  std::size_t bytes_ = 0;
  FenceContext context_ = nullptr;
};''', '''  std::vector<FreedBlock> blocks_;
  std::size_t bytes_ = 0;
  FenceContext context_ = nullptr;
  std::uint64_t opened_ns_ = 0;
 public:
  static std::uint64_t& rt_last_opened_ns() noexcept {
    static thread_local std::uint64_t opened = 0;
    return opened;
  }
};''')
edit('router/free_fence_queue.h', '#include <vector>\n', '#include <vector>\n\n#include "diagnostics/monotonic_clock.h"\n')
edit('router/marked_batches.h', '''  FenceContext context = nullptr;  // the batch's, should it be fenced after all (memory pressure, exit)
  bool passed() const noexcept {''', '''  FenceContext context = nullptr;  // the batch's, should it be fenced after all (memory pressure, exit)
  std::uint64_t opened_ns = 0, closed_ns = 0;
  mutable std::uint32_t checks = 0;
  bool passed() const noexcept {
    ++checks;''')
rt = r'''
#include <cstdio>
#include <cstdlib>

#include "diagnostics/monotonic_clock.h"
namespace gpushim::router {
namespace {
constexpr int kBuckets = 14;  // close -> returned: < 2^(k+1) us
struct RtCounts {
  std::uint64_t batches = 0, blocks = 0, open_ns = 0, wait_ns = 0, checks = 0, taken = 0, taken_wait_ns = 0;
  std::uint64_t hist[kBuckets] = {};
};
struct RtTotals {
  std::atomic<std::uint64_t> batches{0}, blocks{0}, open_ns{0}, wait_ns{0}, checks{0}, taken{0}, taken_wait_ns{0};
  std::atomic<std::uint64_t> hist[kBuckets] = {};
} g_rt;
struct RtThread {
  RtCounts c;
  ~RtThread() {
    g_rt.batches += c.batches; g_rt.blocks += c.blocks; g_rt.open_ns += c.open_ns; g_rt.wait_ns += c.wait_ns;
    g_rt.checks += c.checks; g_rt.taken += c.taken; g_rt.taken_wait_ns += c.taken_wait_ns;
    for (int i = 0; i < kBuckets; ++i) g_rt.hist[i] += c.hist[i];
  }
};
thread_local RtThread t_rt;
struct RtPrinter {
  ~RtPrinter() {
    if (!std::getenv("GPUSHIM_RT_COUNTS")) return;
    const double n = g_rt.batches.load() ? double(g_rt.batches.load()) : 1.0;
    std::fprintf(stderr, "rt marked batches returned by their marks %llu (%.1f blocks each): open->close %.1f us, "
                 "close->returned %.1f us, %.1f checks each (means); taken otherwise %llu (close->taken %.1f us)\n",
                 (unsigned long long)g_rt.batches.load(), g_rt.blocks.load() / n, g_rt.open_ns.load() / n / 1e3,
                 g_rt.wait_ns.load() / n / 1e3, g_rt.checks.load() / n, (unsigned long long)g_rt.taken.load(),
                 g_rt.taken.load() ? g_rt.taken_wait_ns.load() / double(g_rt.taken.load()) / 1e3 : 0.0);
    std::fprintf(stderr, "rt close->returned, share of batches below 2/4/8/.../16384 us:");
    std::uint64_t sum = 0;
    for (int i = 0; i < kBuckets; ++i) {
      sum += g_rt.hist[i].load();
      std::fprintf(stderr, " %.3f", sum / n);
    }
    std::fprintf(stderr, "\n");
  }
} g_rt_printer;
}  // namespace
}  // namespace gpushim::router
'''
edit('router/marked_batches.cpp', '#include "router/thread_state.h"\n', '#include "router/thread_state.h"\n' + rt)
edit('router/marked_batches.cpp', '''    if (held[i].passed()) {
      try {
        passed.push_back(std::move(held[i]));''', '''    if (held[i].passed()) {
      const std::uint64_t waited = monotonic_ns() - held[i].closed_ns;
      RtCounts& rc = t_rt.c;
      ++rc.batches;
      rc.blocks += held[i].blocks.size();
      rc.open_ns += held[i].closed_ns - held[i].opened_ns;
      rc.wait_ns += waited;
      rc.checks += held[i].checks;
      int b = 0;
      while (b < kBuckets - 1 && waited >= (std::uint64_t{2000} << b)) ++b;
      ++rc.hist[b];
      try {
        passed.push_back(std::move(held[i]));''')
edit('router/marked_batches.cpp', '''  batch.context = context;
  const std::uint64_t bytes = batch.bytes;''', '''  batch.context = context;
  batch.opened_ns = PendingBatch::rt_last_opened_ns();
  batch.closed_ns = monotonic_ns();
  const std::uint64_t bytes = batch.bytes;''')
edit('router/marked_batches.cpp', '''  std::vector<MarkedBatch> taken;
  taken.swap(thread.marked[d]);''', '''  std::vector<MarkedBatch> taken;
  taken.swap(thread.marked[d]);
  for (const MarkedBatch& b : taken) {
    ++t_rt.c.taken;
    t_rt.c.taken_wait_ns += monotonic_ns() - b.closed_ns;
  }''')
print('instrumented', d)
