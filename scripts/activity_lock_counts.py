#!/usr/bin/env python3
"""Makes a copy of the tree whose activity lock (router/stream_activity.cpp) times its holds and waits by
call site, for measuring where that lock's time goes; never for a library anyone runs.

    git archive HEAD | tar x -C COPY && scripts/activity_lock_counts.py COPY
    (build COPY's libgpushim.so, then run a program under it with GPUSHIM_ACT_COUNTS=1)

At exit the copy prints, per site (an activation's join, a batch close's marks, a poll, a launch's probe,
a stream's lookup, its create/destroy, a fence's walk), how many holds, their summed and mean time, how
many found the lock taken and how long they waited, and how many try-locks failed; then the polls run and
the driver calls they made. Each thread sums its own counts (no shared line in the measured path) and adds
them at its exit. A hold's two clock reads (~20 ns each) lengthen every hold alike. docs/perf-notes.md,
"Forty-ninth session", has what it showed. Refuses a directory with a .git (the repository itself).
"""
import re

from instrumented_copy import copy_from_argv, replace_once

TOOL = 'activity_lock_counts.py'
SOURCE = 'router/stream_activity.cpp'
p = copy_from_argv(TOOL, SOURCE) + '/' + SOURCE
with open(p) as f:
    c = f.read()
timed = r'''
#include <cstdlib>

#include "diagnostics/monotonic_clock.h"

// scripts/activity_lock_counts.py: the activity lock timed by call site (an instrumented copy only).
namespace gpushim::router {
namespace {
constexpr int kSites = 8;
const char* const kSiteNames[kSites] = {"other", "become_active", "mark_active", "poll",
                                        "probe_after_sub", "lookup", "track", "visit"};
struct ActSite {
  std::uint64_t n = 0, hold = 0, wait = 0, waited = 0, tryfail = 0;
};
struct ActTotals {
  std::atomic<std::uint64_t> n{0}, hold{0}, wait{0}, waited{0}, tryfail{0};
};
ActTotals g_act[kSites];
std::atomic<std::uint64_t> g_polls{0}, g_poll_calls{0};
struct ActThread {
  ActSite s[kSites];
  std::uint64_t polls = 0, calls = 0;
  ~ActThread() {
    for (int i = 0; i < kSites; ++i) {
      g_act[i].n += s[i].n;
      g_act[i].hold += s[i].hold;
      g_act[i].wait += s[i].wait;
      g_act[i].waited += s[i].waited;
      g_act[i].tryfail += s[i].tryfail;
    }
    g_polls += polls;
    g_poll_calls += calls;
  }
};
thread_local ActThread t_act;
thread_local int t_act_site = 0;
thread_local std::uint64_t t_act_since = 0;
struct ActPrinter {
  ~ActPrinter() {
    if (!std::getenv("GPUSHIM_ACT_COUNTS")) return;
    for (int i = 0; i < kSites; ++i) {
      const std::uint64_t n = g_act[i].n.load(), hold = g_act[i].hold.load();
      if (!n && !g_act[i].tryfail.load()) continue;
      std::fprintf(stderr,
                   "act %-16s holds %10llu hold %8.1f ms (%.0f ns mean) waited %9llu wait %9.1f ms "
                   "try_lock misses %llu\n",
                   kSiteNames[i], (unsigned long long)n, hold / 1e6, n ? double(hold) / n : 0.0,
                   (unsigned long long)g_act[i].waited.load(), g_act[i].wait.load() / 1e6,
                   (unsigned long long)g_act[i].tryfail.load());
    }
    std::fprintf(stderr, "act polls run %llu, driver calls in them %llu\n", (unsigned long long)g_polls.load(),
                 (unsigned long long)g_poll_calls.load());
  }
} g_act_printer;
struct SiteScope {
  int saved;
  explicit SiteScope(int site) : saved(t_act_site) { t_act_site = site; }
  ~SiteScope() { t_act_site = saved; }
};
class TimedSpinLock {
 public:
  void lock() noexcept {
    if (l_.try_lock()) {
      t_act_since = monotonic_ns();
      return;
    }
    const std::uint64_t t0 = monotonic_ns();
    l_.lock();
    const std::uint64_t t1 = monotonic_ns();
    ActSite& s = t_act.s[t_act_site];
    s.wait += t1 - t0;
    ++s.waited;
    t_act_since = t1;
  }
  bool try_lock() noexcept {
    if (l_.try_lock()) {
      t_act_since = monotonic_ns();
      return true;
    }
    ++t_act.s[t_act_site].tryfail;
    return false;
  }
  void unlock() noexcept {
    const std::uint64_t held = monotonic_ns() - t_act_since;
    l_.unlock();
    ActSite& s = t_act.s[t_act_site];
    s.hold += held;
    ++s.n;
  }
  void reset() noexcept { l_.reset(); }

 private:
  SpinLock l_;
};
}  // namespace
}  // namespace gpushim::router
'''


# The lock's type, and every guard of it, become the timed lock's.
c = replace_once(TOOL, SOURCE, c, '#include "router/spin_lock.h"\n', '#include "router/spin_lock.h"\n' + timed)
c = replace_once(TOOL, SOURCE, c, '  SpinLock lock;\n  std::unordered_map<CUstream, StreamRecord*> by_stream;',
                 '  TimedSpinLock lock;\n  std::unordered_map<CUstream, StreamRecord*> by_stream;')
c = re.sub(r'std::(lock_guard|unique_lock)<SpinLock>', r'std::\1<TimedSpinLock>', c)
c = replace_once(TOOL, SOURCE, c, 'new (&a.lock) SpinLock();', 'new (&a.lock) TimedSpinLock();')

# Each site names itself for the holds inside it (the index into kSiteNames).
SITES = [
    ('StreamRecord* become_active(StreamRecord* record) noexcept {', 1),
    ('bool mark_active_streams(std::vector<StreamMark>* marks) noexcept {', 2),
    ('bool poll_stream_activity(TurnedOrderedHook on_turned_ordered, void* arg, BusyStreams busy) noexcept {', 3),
    ('void probe_after_submission(StreamRecord* record) noexcept {', 4),
    ('StreamRecord* begin_stream_work_uncached(CUstream stream) noexcept {', 5),
    ('void track_stream(CUstream stream, unsigned int flags) noexcept {', 6),
    ('void untrack_stream(CUstream stream) noexcept {', 6),
    ('ActiveStreamWalk visit_active_streams(ActiveStreamVisitor visit, void* arg) noexcept {', 7),
]
for signature, site in SITES:
    c = replace_once(TOOL, SOURCE, c, signature, signature + '\n  SiteScope act_site_scope(%d);' % site)

# The poll's driver calls, counted where its walk ends.
rotate = '  std::rotate(a.active.begin(), a.active.begin() + static_cast<std::ptrdiff_t>(i), a.active.end());\n'
c = replace_once(TOOL, SOURCE, c, rotate, rotate + '  ++t_act.polls;\n  t_act.calls += calls;\n')
with open(p, 'w') as f:
    f.write(c)
print('instrumented', p)
