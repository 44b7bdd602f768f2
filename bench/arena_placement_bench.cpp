// Where threads of mixed sizes place their blocks once each has an arena of its own (allocators/
// arena_shards.h), on host memory, step by step in a fixed order: how many of their allocations borrow
// from another arena than their own, and at what peak reserved. No timing: placement only, the same on
// every run and machine, so a change to the arenas' placement rules can be weighed here before it takes
// device time.
//
// Why: on the H200, 16 threads of alloc_bench's random pattern spent 11-30% of their time waiting for the
// home arena's lock, taken by the threads' borrowings: an arena grows only where no arena fits, so the
// home, which holds the memory mapped before the threads left, serves whatever their own arenas do not
// (docs/perf-notes.md, "Forty-fifth session"). A rule that borrows less must not raise the peak; this
// prints both for the rules in the library, against one arena's peak.
//
// The workload is alloc_bench's --patterns random: each thread keeps 64 live blocks; a pair frees the
// block in a random slot and allocates the next of 1,024 sizes log-uniform in 256 B-16 MiB. Each thread's
// first 64 blocks come from the home, one short-lived thread each (a thread's first allocation is the
// home's, then it leaves: waits_to_leave 0), as alloc_bench's threads fill their windows before the
// home's convoy moves them. Then the threads take turns, one pair each, round-robin (the allocator sees
// one call at a time: this measures placement, not contention).
//
// Usage: arena_placement_bench [--threads N] [--pairs N] [--seed N]
//   Prints a Markdown table: one arena, then GPUSHIM_ARENA_SHARDS's default. GPUSHIM_VMM_* variables set
//   the arenas' options (unset: the defaults the library uses).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "allocators/arena_shards.h"
#include "config/settings.h"
#include "providers/host_provider.h"

namespace {

using namespace gpushim;

constexpr std::size_t kWindow = 64;  // alloc_bench's kMaxWindow
constexpr std::size_t kSizes = 1024;
constexpr double kMinBytes = 256, kMaxBytes = 16.0 * 1024 * 1024;

const char* from_environment(const char* name, void*) { return std::getenv(name); }

struct Plan {
  std::vector<std::size_t> sizes;  // allocated in turn
  std::vector<std::size_t> picks;  // the slot each pair frees
};

// alloc_bench's random pattern for thread `t` (test_apps/alloc_bench.cu, PairRunner).
Plan plan_for(std::uint64_t seed, int t) {
  std::mt19937_64 rng(seed * 1000003 + std::uint64_t(t));
  Plan plan;
  std::uniform_real_distribution<double> u(std::log(kMinBytes), std::log(kMaxBytes));
  for (std::size_t i = 0; i < kSizes; ++i)
    plan.sizes.push_back(std::clamp(std::size_t(std::exp(u(rng))), std::size_t(kMinBytes), std::size_t(kMaxBytes)));
  for (std::size_t i = 0; i < kSizes; ++i) plan.picks.push_back(std::uniform_int_distribution<std::size_t>(0, kWindow - 1)(rng));
  return plan;
}

struct Row {
  std::size_t arenas = 0;
  std::uint64_t allocations = 0, borrowed = 0, failed = 0;
  std::uint64_t late_allocations = 0, late_borrowed = 0;  // the second half of each thread's pairs
  std::size_t home_blocks_at_end = 0, live_blocks_at_end = 0;
  std::size_t peak_reserved = 0, peak_live = 0;
  std::size_t late_driver_calls = 0;  // the provider's maps and unmaps in the second half
};

Row run(std::size_t shards, int threads, std::uint64_t pairs, std::uint64_t seed) {
  const Settings settings = parse_settings(&from_environment, nullptr);
  HostProvider provider;
  // The home's quiet (ArenaShards::kHomeQuietNs) is taken as passed: no thread is at home here once the
  // windows are filled, and a wait of wall-clock time would make placement depend on this machine's speed.
  ArenaShards arenas(provider, VmmArenaOptions::from(settings), shards, /*waits_to_leave=*/0,
                     ArenaShards::kWaitGapNs, /*home_quiet_ns=*/0);
  std::vector<Plan> plans;
  for (int t = 0; t < threads; ++t) plans.push_back(plan_for(seed, t));

  // Every thread's first window, each block the first (home) allocation of a thread of its own.
  std::vector<std::vector<void*>> slots(threads, std::vector<void*>(kWindow, nullptr));
  std::vector<std::vector<std::size_t>> slot_bytes(threads, std::vector<std::size_t>(kWindow, 0));
  std::size_t live = 0, peak_live = 0;
  for (int t = 0; t < threads; ++t)
    for (std::size_t i = 0; i < kWindow; ++i) {
      const std::size_t bytes = plans[t].sizes[i];
      std::thread([&] { slots[t][i] = arenas.allocate(bytes, 0); }).join();
      if (slots[t][i]) live += slot_bytes[t][i] = bytes;
    }
  peak_live = live;

  // One thread at a time holds the turn, so everything below is written by the holder alone, ordered by
  // the turn's release and acquire: no other synchronization.
  Row row;
  row.allocations = std::uint64_t(threads) * pairs;
  row.late_allocations = std::uint64_t(threads) * (pairs - pairs / 2);
  std::atomic<int> turn{0};
  std::size_t calls_at_half = 0;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      const Plan& plan = plans[t];
      for (std::uint64_t k = 0; k < pairs; ++k) {
        while (turn.load(std::memory_order_acquire) != t) std::this_thread::yield();
        if (t == 0 && k == pairs / 2) calls_at_half = provider.map_calls() + provider.unmap_calls();
        const std::size_t slot = plan.picks[k % kSizes];
        const std::size_t bytes = plan.sizes[(kWindow + k) % kSizes];
        if (void* p = slots[t][slot]) {
          arenas.deallocate(p, slot_bytes[t][slot], 0);
          live -= slot_bytes[t][slot];
        }
        void* p = arenas.allocate(bytes, 0);
        slots[t][slot] = p;
        slot_bytes[t][slot] = p ? bytes : 0;
        live += slot_bytes[t][slot];
        peak_live = std::max(peak_live, live);
        if (!p) {
          ++row.failed;
        } else if (arenas.arena_holding(p) != int(arenas.arena_of_this_thread())) {
          ++row.borrowed;
          row.late_borrowed += k >= pairs / 2;
        }
        turn.store((t + 1) % threads, std::memory_order_release);
      }
    });
  for (std::thread& w : workers) w.join();
  row.late_driver_calls = provider.map_calls() + provider.unmap_calls() - calls_at_half;
  for (int t = 0; t < threads; ++t)
    for (std::size_t i = 0; i < kWindow; ++i)
      if (void* p = slots[t][i]) {
        ++row.live_blocks_at_end;
        row.home_blocks_at_end += arenas.arena_holding(p) == 0;
        arenas.deallocate(p, slot_bytes[t][i], 0);
      }
  row.arenas = arenas.arenas();
  row.peak_reserved = arenas.stats().peak_bytes_reserved;
  row.peak_live = peak_live;
  return row;
}

double percent(std::uint64_t part, std::uint64_t whole) { return whole ? 100.0 * double(part) / double(whole) : 0.0; }
double mib(std::size_t bytes) { return double(bytes) / double(1 << 20); }

}  // namespace

int main(int argc, char** argv) {
  int threads = 16;
  std::uint64_t pairs = 20000, seed = 1;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--threads") && has_value) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--pairs") && has_value) pairs = std::strtoull(argv[++i], nullptr, 10);
    else if (!std::strcmp(argv[i], "--seed") && has_value) seed = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fprintf(stderr, "usage: %s [--threads N] [--pairs N] [--seed N]\n", argv[0]);
      return 2;
    }
  }
  if (threads < 1 || pairs < 2) {
    std::fprintf(stderr, "arena_placement_bench: --threads at least 1, --pairs at least 2\n");
    return 2;
  }
  std::printf("%d threads of mixed sizes (alloc_bench's random pattern), %llu pairs each, seed %llu, host memory\n\n",
              threads, (unsigned long long)pairs, (unsigned long long)seed);
  std::printf("| arenas made | borrowed | borrowed, second half | live blocks in the home at the end | "
              "peak reserved | peak live | reserved / live | maps+unmaps per 1,000 pairs, second half | failed |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (std::size_t shards : {std::size_t{1}, std::size_t(kDefaultArenaShards)}) {
    const Row r = run(shards, threads, pairs, seed);
    std::printf("| %zu | %.1f%% | %.1f%% | %zu of %zu | %.0f MiB | %.0f MiB | %.2f | %.2f | %llu |\n", r.arenas,
                percent(r.borrowed, r.allocations), percent(r.late_borrowed, r.late_allocations),
                r.home_blocks_at_end, r.live_blocks_at_end, mib(r.peak_reserved), mib(r.peak_live),
                r.peak_live ? double(r.peak_reserved) / double(r.peak_live) : 0.0,
                1000.0 * double(r.late_driver_calls) / double(r.late_allocations),
                (unsigned long long)r.failed);
  }
  return 0;
}
