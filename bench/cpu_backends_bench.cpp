// CPU throughput of the provider backends on host memory: core-ns per allocate+deallocate pair with 1,
// 4 and 16 threads (the cost of a pair on one core; it grows with threads only through contention), each thread keeping a window of live blocks (allocate a batch, free it in shuffled order).
// Two workloads: one size (every thread in one slab class: the worst case for per-class locks) and
// mixed small sizes (256 B to 64 KiB, log-uniform). "slab/locks" is the slab with its thread magazines
// off, i.e. only per-class locked depots: the measurement behind the slab's thread caches.
//
// Usage: cpu_backends_bench [pairs_per_thread]   (default 200000). Prints a Markdown table.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "allocators/arena_shards.h"
#include "allocators/buddy_allocator.h"
#include "allocators/slab_allocator.h"
#include "allocators/tiered_allocator.h"
#include "allocators/vmm_arena.h"
#include "config/settings.h"
#include "providers/host_provider.h"

namespace {

using namespace gpushim;

constexpr std::size_t kBatch = 64;  // live blocks per thread between frees
constexpr int kRepeats = 3;

struct Workload {
  const char* name;
  std::function<std::size_t(std::mt19937_64&)> size;
};

struct Backend {
  const char* name;
  std::function<std::unique_ptr<Allocator>(MemoryProvider&)> make;
};

double run(const Backend& backend, const Workload& workload, int threads, std::size_t pairs_per_thread) {
  HostProvider provider;
  auto allocator = backend.make(provider);
  auto body = [&](int t, std::vector<std::size_t>& sizes) {
    std::vector<void*> blocks(kBatch);
    std::vector<std::size_t> order(kBatch);
    for (std::size_t i = 0; i < kBatch; ++i) order[i] = i;
    std::mt19937_64 rng(t);
    std::shuffle(order.begin(), order.end(), rng);
    for (std::size_t done = 0; done < pairs_per_thread; done += kBatch) {
      for (std::size_t i = 0; i < kBatch; ++i) blocks[i] = allocator->allocate(sizes[(done + i) % sizes.size()], 0);
      for (std::size_t i : order) {
        if (blocks[i] != nullptr) allocator->deallocate(blocks[i], sizes[(done + i) % sizes.size()], 0);
      }
    }
  };
  std::vector<std::vector<std::size_t>> sizes(threads);
  for (int t = 0; t < threads; ++t) {
    std::mt19937_64 rng(1000 + t);
    sizes[t].resize(4096);
    for (auto& s : sizes[t]) s = workload.size(rng);
  }
  // Warm-up: map the slabs/regions once so the timing shows the steady state, not first-touch growth.
  body(0, sizes[0]);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(body, t, std::ref(sizes[t]));
  for (auto& thread : pool) thread.join();
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  // Core time per pair: with more threads than cores, wall time counts every core once, so the table
  // stays comparable across thread counts and machines.
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const double busy_cores = std::min<double>(threads, cores);
  return ns * busy_cores / (static_cast<double>(pairs_per_thread) * threads);
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t pairs = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200000;
  Settings settings;
  settings.vmm_reserve = std::size_t{64} << 30;
  const std::vector<Backend> backends = {
      {"slab", [](MemoryProvider& p) { return std::make_unique<SlabAllocator>(p, kDefaultSlabMaxSize, true); }},
      {"slab/locks", [](MemoryProvider& p) { return std::make_unique<SlabAllocator>(p, kDefaultSlabMaxSize, false); }},
      {"tiered", [&](MemoryProvider& p) { return make_tiered_allocator(p, settings); }},
      {"buddy", [&](MemoryProvider& p) { return make_buddy_allocator(p, settings); }},
      {"vmm", [&](MemoryProvider& p) { return make_vmm_arena(p, settings); }},
  };
  const std::vector<Workload> workloads = {
      {"4 KiB", [](std::mt19937_64&) { return std::size_t{4096}; }},
      {"256 B-64 KiB",
       [](std::mt19937_64& rng) {
         std::uniform_real_distribution<double> e(8, 16);
         return static_cast<std::size_t>(std::exp2(e(rng)));
       }},
  };
  const int thread_counts[] = {1, 4, 16};
  std::printf("core-ns per allocate+deallocate pair (wall time x busy cores / pairs), best of %d;\n"
              "%zu pairs per thread, batches of %zu live blocks; %u hardware threads\n\n", kRepeats,
              pairs, kBatch, std::thread::hardware_concurrency());
  std::printf("| backend | sizes | 1 thread | 4 threads | 16 threads |\n|---|---|---|---|---|\n");
  for (const auto& workload : workloads) {
    for (const auto& backend : backends) {
      std::printf("| %s | %s", backend.name, workload.name);
      for (int threads : thread_counts) {
        // Best of kRepeats: the minimum is the least disturbed by other processes on the machine.
        double best = 1e300;
        for (int r = 0; r < kRepeats; ++r) best = std::min(best, run(backend, workload, threads, pairs));
        std::printf(" | %.0f", best);
      }
      std::printf(" |\n");
      std::fflush(stdout);
    }
  }
  return 0;
}
