// Host time of an alloc+free pair in the vmm arena over host memory (the algorithm alone, no router, no
// driver): what the arena adds to the ~200 ns budget of a pair on the GPU.
//   cpu_alloc_bench --benchmark_filter=Pair
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "allocators/statistics_allocator.h"
#include "allocators/vmm_arena.h"
#include "providers/host_provider.h"

namespace {

using namespace gpushim;
constexpr std::size_t MiB = std::size_t{1} << 20;

struct Fixture {
  HostProvider provider;
  std::unique_ptr<Allocator> arena;
  explicit Fixture(bool with_statistics) {
    VmmArenaOptions o;
    o.reserve = 8ull << 30;
    auto inner = std::make_unique<VmmArena>(provider, o);
    if (with_statistics) arena = std::make_unique<StatisticsAllocator>(std::move(inner));
    else arena = std::move(inner);
  }
};

Fixture& shared_fixture(bool with_statistics) {
  static Fixture plain(false), counted(true);
  return with_statistics ? counted : plain;
}

// One pair of the same size, with `live` other blocks held so the free list is not trivially empty.
void Pair(benchmark::State& state, bool with_statistics) {
  Fixture& f = shared_fixture(with_statistics);
  std::size_t bytes = static_cast<std::size_t>(state.range(0));
  std::vector<void*> held;
  if (state.thread_index() == 0) {
    // Warm: map memory first, so the loop measures reuse, as in a steady-state program.
    void* warm = f.arena->allocate(64 * MiB, 0);
    f.arena->deallocate(warm, 64 * MiB, 0);
  }
  for (int i = 0; i < 64; ++i) held.push_back(f.arena->allocate(4096 + 256 * i, 0));
  for (auto _ : state) {
    void* p = f.arena->allocate(bytes, 0);
    benchmark::DoNotOptimize(p);
    f.arena->deallocate(p, bytes, 0);
  }
  for (int i = 0; i < 64; ++i) f.arena->deallocate(held[i], 4096 + 256 * i, 0);
  state.SetItemsProcessed(state.iterations());
}

// Random sizes and lifetimes: 1000 live blocks, each step frees one and allocates another.
void RandomChurn(benchmark::State& state) {
  HostProvider provider;
  VmmArenaOptions o;
  o.reserve = 16ull << 30;
  VmmArena arena(provider, o);
  std::mt19937_64 rng(1);
  std::vector<std::pair<void*, std::size_t>> live;
  auto draw = [&] { return std::size_t{256} << (rng() % 13); };  // 256 B .. 1 MiB
  for (int i = 0; i < 1000; ++i) {
    std::size_t n = draw();
    live.emplace_back(arena.allocate(n, 0), n);
  }
  for (auto _ : state) {
    auto& slot = live[rng() % live.size()];
    arena.deallocate(slot.first, slot.second, 0);
    slot.second = draw();
    slot.first = arena.allocate(slot.second, 0);
    benchmark::DoNotOptimize(slot.first);
  }
  for (auto& [p, n] : live) arena.deallocate(p, n, 0);
  state.SetItemsProcessed(state.iterations());
}

}  // namespace

BENCHMARK_CAPTURE(Pair, arena, false)->Arg(256)->Arg(65536)->Arg(1 << 20)->Arg(16 << 20);
BENCHMARK_CAPTURE(Pair, arena, false)->Arg(256)->Threads(2)->Threads(4)->Threads(8)->UseRealTime();
BENCHMARK_CAPTURE(Pair, arena_with_statistics, true)->Arg(256)->Arg(1 << 20);
BENCHMARK(RandomChurn);
BENCHMARK_MAIN();
