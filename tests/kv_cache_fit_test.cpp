// Fit on an LLM decoding loop whose KV cache grows by torch.cat every token (tests/decoding_workload.h):
// peak reserved / peak live of the vmm and tiered backends, built as `gpushim trace replay` builds them,
// must stay within bounds that the arena's placement policy earns (docs/perf-notes.md, "Fit on a growing
// KV cache"). The workload and the backends are deterministic, so the ratios are the same on every run.
#include <gtest/gtest.h>

#include <string>

#include <cstdio>
#include <iterator>
#include <map>

#include "allocators/backend_registry.h"
#include "allocators/thread_cache_allocator.h"
#include "providers/host_provider.h"
#include "tests/decoding_workload.h"

namespace gpushim {
namespace {

using testing::DecodingWorkload;
using testing::DecodingWorkloadOptions;
using testing::WorkloadOp;

const char* no_environment(const char*, void*) { return nullptr; }

DecodingWorkloadOptions schedule(int concurrent) {
  DecodingWorkloadOptions o;  // 24 requests, batch 1-32, prompt 16-512, 32-512 tokens
  o.concurrent = concurrent;
  return o;
}

enum class Caches { none, classes_only, classes_and_large_slots };

// With the per-thread caches in front, as libgpushim composes every provider backend
// (allocators/backend_stack.cpp), or without them, as replay and the bench build the backend.
testing::WorkloadFit fit_of(const char* backend, const DecodingWorkload& workload, Caches caches = Caches::none) {
  const Settings settings = parse_settings(&no_environment, nullptr);  // the defaults, as replay uses them
  HostProvider provider;
  std::unique_ptr<Allocator> allocator = find_backend(backend)->factory(provider, settings);
  if (caches != Caches::none)
    allocator = std::make_unique<ThreadCacheAllocator>(
        std::move(allocator), caches == Caches::classes_and_large_slots ? ThreadCacheAllocator::LargeSlots::always
                                                                         : ThreadCacheAllocator::LargeSlots::never);
  testing::WorkloadFit fit = testing::run_workload(workload, *allocator, provider);
  allocator.reset();
  EXPECT_EQ(provider.misuse_count(), 0u) << backend;
  EXPECT_EQ(provider.bytes_mapped(), 0u) << backend;
  return fit;
}

// The workload is what its header says: every block freed, every cache block one row per sequence
// larger than the block it replaces and allocated while that one is live, and the same ops every time.
TEST(DecodingWorkload, GrowsEachCacheByOneRowPerSequenceWhileTheOldBlockIsLive) {
  DecodingWorkloadOptions o = schedule(4);
  o.requests = 6;
  const DecodingWorkload w = testing::make_decoding_workload(o);
  const DecodingWorkload again = testing::make_decoding_workload(o);
  ASSERT_EQ(w.ops.size(), again.ops.size());
  for (std::size_t i = 0; i < w.ops.size(); ++i) ASSERT_EQ(w.ops[i].bytes, again.ops[i].bytes) << i;

  const std::size_t row = o.width * o.element_bytes;
  std::map<std::uint32_t, std::size_t> live;  // id -> bytes
  std::uint64_t live_bytes = 0, peak = 0;
  std::size_t grown = 0;
  for (std::size_t i = 0; i < w.ops.size(); ++i) {
    const WorkloadOp& op = w.ops[i];
    if (op.allocate) {
      ASSERT_TRUE(live.emplace(op.id, op.bytes).second) << "id " << op.id << " allocated twice";
      live_bytes += op.bytes;
      peak = std::max(peak, live_bytes);
      continue;
    }
    auto it = live.find(op.id);
    ASSERT_NE(it, live.end()) << "free of a block not live";
    ASSERT_EQ(it->second, op.bytes);
    // A cache block freed right after an allocation larger by a whole number of rows: torch.cat.
    const WorkloadOp& before = w.ops[i - 1];
    if (before.allocate && before.bytes > op.bytes && (before.bytes - op.bytes) % row == 0 &&
        op.bytes % ((before.bytes - op.bytes)) == 0 && live.count(before.id))
      ++grown;
    live.erase(it);
    live_bytes -= op.bytes;
  }
  EXPECT_TRUE(live.empty());
  EXPECT_EQ(peak, w.peak_live_bytes);
  // 2 caches x 8 layers per generated token after the first.
  EXPECT_GT(grown, std::size_t{16} * 31 * 6);
}

// Bounds, over four seeds (batches, prompts and lengths drawn differently). Back to back, a block of
// B*L rows is replaced by one of B*(L+1) rows, 16 caches in turn: an allocator that never moves memory
// keeps at least one hole about one cache block large that the next, one row larger block does not fit
// (every hole a cache leaves is one row too small), so its floor is about 1 + 1/17 = 1.06x (16 blocks
// live plus the new one). The arena adds up to one growth step (32 MiB, 2% of the ~1.4 GiB peak) and
// tiered the slab's own slabs (one or two per size class in use): 1.09x and 1.10x for every seed.
// Four at a time, the peak comes when a large request's prefill allocates blocks larger than every hole
// the other requests' caches left (seed 4: 198 MiB blocks, 287 MiB in holes of at most 64 MiB), which
// no placement can use without moving memory; that varies with the draw, so the bound is on the mean.
// Measured (seeds 1-4) before the arena filled holes ahead of its wilderness and tiered's split moved to
// 64 KiB: back to back vmm 1.20-1.55x, tiered 1.09-1.16x; four at a time, mean vmm 1.10x, tiered 1.12x.
// After: back to back vmm 1.06-1.08x, tiered 1.08-1.09x; four at a time, mean vmm 1.07x, tiered 1.08x.
constexpr std::uint64_t kSeeds[] = {1, 2, 3, 4};
constexpr double kArenaBackToBackBound = 1.09;
constexpr double kTieredBackToBackBound = 1.10;
constexpr double kArenaInterleavedMeanBound = 1.085;
constexpr double kTieredInterleavedMeanBound = 1.095;

void expect_back_to_back_within(const char* backend, double bound) {
  for (std::uint64_t seed : kSeeds) {
    DecodingWorkloadOptions o = schedule(1);
    o.seed = seed;
    const DecodingWorkload w = testing::make_decoding_workload(o);
    const testing::WorkloadFit fit = fit_of(backend, w);
    EXPECT_EQ(fit.failed, 0u);
    EXPECT_EQ(fit.peak_live, w.peak_live_bytes);
    EXPECT_LE(fit.ratio(), bound) << backend << ", seed " << seed << ": peak reserved " << fit.peak_reserved
                                  << " for " << fit.peak_live << " live";
  }
}

void expect_interleaved_mean_within(const char* backend, double bound) {
  double sum = 0;
  for (std::uint64_t seed : kSeeds) {
    DecodingWorkloadOptions o = schedule(4);
    o.seed = seed;
    const testing::WorkloadFit fit = fit_of(backend, testing::make_decoding_workload(o));
    EXPECT_EQ(fit.failed, 0u);
    sum += fit.ratio();
    std::printf("%s, seed %llu, four at a time: %.3fx\n", backend, static_cast<unsigned long long>(seed),
                fit.ratio());
  }
  EXPECT_LE(sum / std::size(kSeeds), bound) << backend << ": mean reserved / live over the seeds";
}

TEST(KvCacheFit, VmmBackToBack) { expect_back_to_back_within("vmm", kArenaBackToBackBound); }
TEST(KvCacheFit, TieredBackToBack) { expect_back_to_back_within("tiered", kTieredBackToBackBound); }
TEST(KvCacheFit, VmmFourRequestsAtATime) { expect_interleaved_mean_within("vmm", kArenaInterleavedMeanBound); }
TEST(KvCacheFit, TieredFourRequestsAtATime) {
  expect_interleaved_mean_within("tiered", kTieredInterleavedMeanBound);
}

// The large slots of the per-thread caches (blocks above 1 MiB kept by exact size) must not cost memory
// on this loop, where each request is a bit larger than the block freed before it. Back to back (one
// thread) the backend sees the same calls in the same order as with the size classes alone: a miss of
// any size gives the thread's parked blocks back before the backend is asked. So the peak is the same
// to the byte. Four at a time, exact-size hits move some blocks; the mean over the seeds may not rise
// by more than half a percent on vmm (measured: 1.134x -> 1.128x). On tiered, whose slabs are blocks of
// its arena (allocators/block_memory_provider.h), by 2% (measured: 1.114x -> 1.129x; with slabs of
// their own it was 1.111x -> 1.113x). This loop parks always (GPUSHIM_LARGE_SLOTS=1); by default a
// thread parks only while it finds the arena's lock held, which a loop of one call at a time never does.
// The size classes themselves (up to 1 MiB, 12.5% rounding, parked blocks) cost more than that against
// the backend alone (vmm back to back 1.063-1.080x alone, 1.072-1.118x with them): not guarded here.
constexpr double kLargeSlotsInterleavedMeanSlack = 0.005;
constexpr double kLargeSlotsInterleavedMeanSlackTiered = 0.02;

void expect_large_slots_cost_no_memory(const char* backend) {
  double with_slots = 0, without = 0;
  for (int concurrent : {1, 4}) {
    for (std::uint64_t seed : kSeeds) {
      DecodingWorkloadOptions o = schedule(concurrent);
      o.seed = seed;
      const DecodingWorkload w = testing::make_decoding_workload(o);
      const testing::WorkloadFit classes = fit_of(backend, w, Caches::classes_only);
      const testing::WorkloadFit slots = fit_of(backend, w, Caches::classes_and_large_slots);
      EXPECT_EQ(slots.failed, 0u);
      std::printf("%s, seed %llu, %d at a time: %.3fx with size classes, %.3fx with large slots too\n", backend,
                  static_cast<unsigned long long>(seed), concurrent, classes.ratio(), slots.ratio());
      if (concurrent == 1) {
        EXPECT_EQ(slots.peak_reserved, classes.peak_reserved) << backend << ", seed " << seed;
      } else {
        with_slots += slots.ratio();
        without += classes.ratio();
      }
    }
  }
  const double slack = std::string(backend) == "tiered" ? kLargeSlotsInterleavedMeanSlackTiered
                                                        : kLargeSlotsInterleavedMeanSlack;
  EXPECT_LE(with_slots / std::size(kSeeds), without / std::size(kSeeds) + slack)
      << backend << ": four at a time, mean reserved / live over the seeds";
}

TEST(KvCacheFit, LargeSlotsOfTheThreadCachesCostNoMemoryVmm) { expect_large_slots_cost_no_memory("vmm"); }
TEST(KvCacheFit, LargeSlotsOfTheThreadCachesCostNoMemoryTiered) { expect_large_slots_cost_no_memory("tiered"); }

}  // namespace
}  // namespace gpushim
