// SlabAllocator on host memory: size classes, packing into slabs, give-back of empty slabs, thread
// magazines returning on thread exit, cross-thread frees, out-of-memory recovery, many threads.
#include "allocators/slab_allocator.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "providers/host_provider.h"
#include "tests/backend_test_support.h"

namespace gpushim {
namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

// Every class a multiple of the alignment, so every slot of a slab is aligned; 1.25x apart from 2 KiB on
// (below, the 512-B alignment forces 512, 1024, 1536, 2048).
TEST(SlabAllocator, SizeClassesAreAlignedAndAtMost25PercentApartAbove2KiB) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  ASSERT_GT(slab.class_count(), 4u);
  EXPECT_EQ(slab.class_block_bytes(0), 512u);
  EXPECT_EQ(slab.class_block_bytes(1), 1024u);
  EXPECT_EQ(slab.class_block_bytes(2), 1536u);
  EXPECT_EQ(slab.class_block_bytes(3), 2048u);
  EXPECT_EQ(slab.class_block_bytes(slab.class_count() - 1), kDefaultSlabMaxSize);
  for (std::size_t i = 1; i < slab.class_count(); ++i) {
    const std::size_t prev = slab.class_block_bytes(i - 1), size = slab.class_block_bytes(i);
    EXPECT_EQ(size % testing::kTextureAlignment, 0u);
    EXPECT_GT(size, prev);
    if (prev >= 2048) {
      EXPECT_LE(size * 4, prev * 5) << prev << " -> " << size;
    }
  }
}

TEST(SlabAllocator, OddMaximumGetsItsOwnLastClass) {
  HostProvider provider;
  SlabAllocator slab(provider, 300 * KiB + 1);
  EXPECT_EQ(slab.max_small_size(), 300 * KiB + 512);
  EXPECT_EQ(slab.class_block_bytes(slab.class_count() - 1), 300 * KiB + 512);
  void* p = slab.allocate(300 * KiB + 1, 0);
  ASSERT_NE(p, nullptr);
  slab.deallocate(p, 300 * KiB + 1, 0);
}

class SlabRandom : public ::testing::TestWithParam<bool> {};

TEST_P(SlabRandom, RandomSequenceMatchesModelAndGivesEverythingBack) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize, /*thread_caches=*/GetParam());
  EXPECT_EQ(testing::run_random_sequence(slab, 10000, 8 * MiB, 2), 0u);
  ASSERT_FALSE(::testing::Test::HasFailure());
  AllocatorStats s = slab.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
  EXPECT_EQ(s.allocations, s.deallocations);
  EXPECT_GT(s.peak_bytes_reserved, 0u);
  slab.release_cached();
  EXPECT_EQ(slab.slab_count(), 0u);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(slab.stats().bytes_reserved, 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}
INSTANTIATE_TEST_SUITE_P(ThreadCachesOnAndOff, SlabRandom, ::testing::Bool());

TEST(SlabAllocator, BlocksOfOneClassShareASlab) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::vector<void*> blocks;
  for (int i = 0; i < 4096; ++i) blocks.push_back(slab.allocate(200, 0));  // 4096 x 512 B = one 2 MiB slab
  EXPECT_EQ(slab.slab_count(), 1u);
  EXPECT_EQ(provider.bytes_mapped(), 2 * MiB);
  AllocatorStats s = slab.stats();
  EXPECT_EQ(s.bytes_in_use, 4096u * 200);
  EXPECT_EQ(s.internal_waste, 4096u * 312);
  EXPECT_EQ(s.bytes_cached, 0u);
  void* one_more = slab.allocate(200, 0);
  EXPECT_EQ(slab.slab_count(), 2u);
  slab.deallocate(one_more, 200, 0);
  for (void* p : blocks) slab.deallocate(p, 200, 0);
}

// Tiered's shape (allocators/tiered_allocator.h): small slabs, at least 16 blocks each, but that rule
// never asks for more than 2 MiB: a class of 1 MiB blocks takes 2 MiB at a time, not 16 MiB.
TEST(SlabAllocator, SlabsHoldTheMinimumBlocksUpTo2MiB) {
  HostProvider provider(64 * KiB);
  SlabAllocator slab(provider, MiB, /*thread_caches=*/false, /*idle_bytes=*/0, 64 * KiB, 16);
  const std::pair<std::size_t, std::size_t> block_and_slab[] = {
      {4 * KiB, 64 * KiB}, {64 * KiB, MiB}, {MiB, 2 * MiB}};
  for (auto [block, slab_bytes] : block_and_slab) {
    const std::size_t before = provider.bytes_mapped();
    void* p = slab.allocate(block, 0);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(provider.bytes_mapped() - before, slab_bytes) << "a slab for " << block << " B blocks";
    slab.deallocate(p, block, 0);
  }
}

TEST(SlabAllocator, EmptySlabsAboveTheIdleThresholdGoBackOnFree) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::vector<void*> blocks;
  for (int i = 0; i < 5 * 512; ++i) blocks.push_back(slab.allocate(4 * KiB, 0));  // 5 slabs of 4 KiB
  EXPECT_EQ(slab.slab_count(), 5u);
  for (void* p : blocks) slab.deallocate(p, 4 * KiB, 0);
  slab.flush_this_thread();
  EXPECT_EQ(slab.slab_count(), 1u);  // one empty slab kept for reuse
  EXPECT_EQ(slab.release_cached(), 2 * MiB);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

TEST(SlabAllocator, MagazinesOfAnExitedThreadReturnToTheDepot) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::thread([&] {
    std::vector<void*> blocks;
    for (int i = 0; i < 100; ++i) blocks.push_back(slab.allocate(1000, 0));
    for (void* p : blocks) slab.deallocate(p, 1000, 0);  // up to a magazine's worth stays cached
  }).join();
  const AllocatorStats s = slab.stats();
  EXPECT_EQ(s.allocations, 100u);
  EXPECT_EQ(s.deallocations, 100u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  // Only possible if the exited thread's magazine went back: otherwise its slab is not empty.
  EXPECT_EQ(slab.release_cached(), 2 * MiB);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

TEST(SlabAllocator, BlocksFreedByAnotherThreadAreAccounted) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::vector<void*> blocks;
  for (int i = 0; i < 1000; ++i) blocks.push_back(slab.allocate(3000, 0));
  std::thread([&] {
    for (void* p : blocks) slab.deallocate(p, 3000, 0);
  }).join();
  EXPECT_EQ(slab.stats().bytes_in_use, 0u);
  slab.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

// A worker that frees a 512 B block into its magazine (pinning the slab), sets `phase` to 1 and waits for
// 2; then `go_on`. Returns once the phase is 1.
template <typename GoOn>
std::thread worker_with_a_block_in_its_magazine(SlabAllocator& slab, std::atomic<int>& phase, GoOn go_on) {
  std::thread worker([&slab, &phase, go_on] {
    void* p = slab.allocate(512, 0);
    slab.deallocate(p, 512, 0);
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
    go_on();
  });
  while (phase.load() != 1) std::this_thread::yield();
  return worker;
}

TEST(SlabAllocator, OtherThreadsFlushTheirMagazinesAfterReleaseCached) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::atomic<int> phase{0};
  std::thread worker = worker_with_a_block_in_its_magazine(slab, phase, [&] {
    void* p = slab.allocate(4096, 0);  // any call notices the flush request
    slab.deallocate(p, 4096, 0);
    phase = 3;
    while (phase.load() != 4) std::this_thread::yield();
  });
  EXPECT_EQ(slab.release_cached(), 0u);  // the worker still holds the 512 B block in its magazine
  phase = 2;
  while (phase.load() != 3) std::this_thread::yield();
  // The 512 B slab is empty now; the worker's new 4 KiB slab is pinned by its magazine until it exits.
  EXPECT_EQ(slab.release_cached(), 2 * MiB);
  phase = 4;
  worker.join();
  EXPECT_EQ(slab.release_cached(), 2 * MiB);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

// ... while flush_every_thread() takes a thread's magazines without its next call: a thread that stopped
// allocating, alive and idle, pins no slab.
TEST(SlabAllocator, FlushEveryThreadEmptiesAnIdleThreadsMagazines) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::atomic<int> phase{0};
  std::thread worker = worker_with_a_block_in_its_magazine(slab, phase, [] {});
  EXPECT_EQ(slab.release_cached(), 0u) << "the worker's magazine did not pin its slab: the test proves nothing";
  slab.flush_every_thread();
  EXPECT_EQ(slab.release_cached(), 2 * MiB) << "the idle worker's magazine kept its slab";
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  phase = 2;
  worker.join();
  const AllocatorStats s = slab.stats();
  EXPECT_EQ(s.allocations, s.deallocations);
  EXPECT_EQ(s.bytes_in_use, 0u);
}

// A forked child has only the forking thread; it empties the parent's other thread's magazines (alive,
// holding a block, at the fork) and gives every slab back.
TEST(SlabAllocator, AForkedChildFlushesWhatOtherThreadsCached) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::atomic<bool> cached{false}, release{false};
  std::thread other([&] {
    slab.deallocate(slab.allocate(512, 0), 512, 0);
    cached.store(true);
    while (!release.load()) std::this_thread::yield();
  });
  while (!cached.load()) std::this_thread::yield();
  const pid_t child = fork();
  if (child == 0) {
    void* p = slab.allocate(KiB, 0);
    slab.deallocate(p, KiB, 0);
    slab.flush_every_thread();
    slab.release_cached();
    _exit(p != nullptr && provider.bytes_mapped() == 0 ? 0 : 1);
  }
  release.store(true);
  other.join();
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  slab.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

// Threads allocate, write their tag, pass blocks to each other and free them while another thread empties
// every magazine and gives empty slabs back, over and over: no block is handed out twice, and the
// counts add up.
TEST(SlabAllocator, ManyThreadsWithConcurrentFlushesOfEveryThread) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  constexpr int kThreads = 4;
  std::atomic<bool> done{false};
  std::atomic<int> corrupted{0}, failures{0}, flushes{0};
  std::thread flusher([&] {
    while (!done.load()) {
      slab.flush_every_thread();
      slab.release_cached();
      flushes.fetch_add(1);
      std::this_thread::yield();
    }
  });
  struct Block {
    unsigned char* p;
    std::size_t bytes;
    unsigned char tag;
  };
  std::vector<std::vector<Block>> handoff(kThreads);
  std::vector<std::mutex> handoff_locks(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Block> live;
      unsigned seed = 11u + static_cast<unsigned>(t);
      auto free_block = [&](const Block& b) {
        if (b.p[0] != b.tag || b.p[b.bytes - 1] != b.tag) corrupted.fetch_add(1);
        slab.deallocate(b.p, b.bytes, 0);
      };
      for (int i = 0; i < 20000; ++i) {
        seed = seed * 1103515245u + 12345u;
        const std::size_t bytes = 1 + (seed >> 8) % (64 * KiB);
        auto* p = static_cast<unsigned char*>(slab.allocate(bytes, 0));
        if (!p) {
          failures.fetch_add(1);
          continue;
        }
        const auto tag = static_cast<unsigned char>(t * 31 + i);
        p[0] = p[bytes - 1] = tag;
        live.push_back({p, bytes, tag});
        if (live.size() > 8) {
          const Block b = live[seed % live.size()];
          live.erase(std::find_if(live.begin(), live.end(), [&](const Block& x) { return x.p == b.p; }));
          if (seed & 1) {
            free_block(b);
          } else {
            std::lock_guard<std::mutex> guard(handoff_locks[(t + 1) % kThreads]);
            handoff[(t + 1) % kThreads].push_back(b);
          }
        }
        std::vector<Block> mine;
        {
          std::lock_guard<std::mutex> guard(handoff_locks[t]);
          mine.swap(handoff[t]);
        }
        for (const Block& b : mine) free_block(b);
      }
      for (const Block& b : live) free_block(b);
    });
  }
  for (std::thread& thread : threads) thread.join();
  done = true;
  flusher.join();
  for (int t = 0; t < kThreads; ++t)
    for (const Block& b : handoff[t]) slab.deallocate(b.p, b.bytes, 0);
  EXPECT_EQ(corrupted.load(), 0) << "a block was handed to two owners";
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(flushes.load(), 0);
  const AllocatorStats s = slab.stats();
  EXPECT_EQ(s.allocations, s.deallocations);
  EXPECT_EQ(s.bytes_in_use, 0u);
  slab.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(SlabAllocator, OutOfMemoryReturnsNullThenRecoversForAnyClass) {
  HostProvider provider(HostProvider::kDefaultGranularity, 8 * MiB);
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  std::vector<void*> blocks;
  for (int i = 0; i < 10000; ++i) {
    void* p = slab.allocate(64 * KiB, 0);
    if (p == nullptr) break;
    blocks.push_back(p);
  }
  EXPECT_EQ(blocks.size(), 4u * 32);  // 4 slabs of 32 blocks under the 8 MiB cap
  EXPECT_EQ(slab.allocate(256 * KiB, 0), nullptr);
  EXPECT_EQ(slab.allocate(3 * MiB, 0), nullptr);
  EXPECT_GE(slab.stats().failed_allocations, 2u);
  for (void* p : blocks) slab.deallocate(p, 64 * KiB, 0);
  // No release_cached: the slab reclaims its own idle slabs (and this thread's magazine) on failure.
  void* mid = slab.allocate(256 * KiB, 0);
  EXPECT_NE(mid, nullptr);
  void* large = slab.allocate(3 * MiB, 0);
  EXPECT_NE(large, nullptr) << provider.bytes_mapped() << " mapped, " << slab.slab_count() << " slabs";
  slab.deallocate(mid, 256 * KiB, 0);
  slab.deallocate(large, 3 * MiB, 0);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(SlabAllocator, ManyThreadsKeepBlocksDisjoint) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  testing::run_random_sequences_in_threads(slab, 8, 5000, 2 * MiB, 200);
  slab.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
  EXPECT_EQ(provider.misuse_count(), 0u);
}

TEST(SlabAllocator, SeveralAllocatorsInOneThreadKeepSeparateCaches) {
  HostProvider provider;
  for (int round = 0; round < 3; ++round) {
    SlabAllocator a(provider, kDefaultSlabMaxSize), b(provider, kDefaultSlabMaxSize);
    void* pa = a.allocate(256, 0);
    void* pb = b.allocate(256, 0);
    a.deallocate(pa, 256, 0);
    b.deallocate(pb, 256, 0);
    EXPECT_EQ(a.release_cached(), 2 * MiB);
    EXPECT_EQ(b.release_cached(), 2 * MiB);
  }
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

TEST(SlabAllocator, FactoryUsesTheMaxSizeSetting) {
  HostProvider provider;
  Settings settings;
  settings.slab_max_size = 64 * KiB;
  auto slab = make_slab_allocator(provider, settings);
  void* p = slab->allocate(64 * KiB + 1, 0);  // above the max: a dedicated run
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(slab->stats().internal_waste, 2 * MiB - 64 * KiB - 1);
  slab->deallocate(p, 64 * KiB + 1, 0);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

// The index of `slab`'s class of blocks of exactly `bytes`.
std::size_t class_index(const SlabAllocator& slab, std::size_t bytes) {
  for (std::size_t i = 0; i < slab.class_count(); ++i)
    if (slab.class_block_bytes(i) == bytes) return i;
  ADD_FAILURE() << "no class of " << bytes << " bytes";
  return 0;
}

// A batch given back together (the fence queue's hand-back, Allocator::deallocate_batch): the magazine
// takes what it has room for and each class's rest goes to its depot under one hold of the lock, the
// classes interleaved in the batch or not. Block by block, a 64 KiB magazine (4 blocks) sent half of
// itself back at every second free: 14 holds for these 32 blocks.
TEST(SlabAllocator, ABatchTakesEachClassDepotsLockOnce) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  const std::size_t big = class_index(slab, 64 * KiB), small = class_index(slab, 4 * KiB);
  std::vector<BlockToFree> batch;
  for (int i = 0; i < 32; ++i) {
    batch.push_back({slab.allocate(64 * KiB, 0), 64 * KiB, 0});
    batch.push_back({slab.allocate(4000, 0), 4000, 0});  // a smaller class between them
  }
  std::vector<BlockToFree> handed = batch;
  handed.push_back({nullptr, 64 * KiB, 0});  // ignored, as deallocate() ignores it
  const std::uint64_t big_before = slab.class_depot_returns(big);
  const std::uint64_t small_before = slab.class_depot_returns(small);
  slab.deallocate_batch(handed.data(), handed.size());
  EXPECT_EQ(slab.class_depot_returns(big) - big_before, 1u) << "the 64 KiB blocks the magazine had no room for";
  // 4 KiB: a 64-block magazine; its 32 blocks fit unless the allocations left it more than half full.
  EXPECT_LE(slab.class_depot_returns(small) - small_before, 1u);
  const AllocatorStats s = slab.stats();
  EXPECT_EQ(s.allocations, 64u);
  EXPECT_EQ(s.deallocations, 64u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
  // Every block is free again: the same 32 of each class come back, in some order.
  std::vector<BlockToFree> again;
  for (int i = 0; i < 32; ++i) {
    again.push_back({slab.allocate(64 * KiB, 0), 64 * KiB, 0});
    again.push_back({slab.allocate(4000, 0), 4000, 0});
  }
  const auto addresses = [](const std::vector<BlockToFree>& blocks) {
    std::vector<void*> out;
    for (const BlockToFree& b : blocks) out.push_back(b.p);
    std::sort(out.begin(), out.end());
    return out;
  };
  EXPECT_EQ(addresses(again), addresses(batch));
  for (const BlockToFree& b : again) slab.deallocate(b.p, b.bytes, 0);
  slab.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

// Lone frees follow the batch's rule with a run of one: a free the full magazine has no room for sends
// the magazine's top half to the depot first, so a thread that only frees takes the depot's lock once
// per half magazine (2 blocks at 64 KiB), not once per free.
TEST(SlabAllocator, LoneFreesTakeTheDepotsLockOncePerHalfMagazine) {
  HostProvider provider;
  SlabAllocator slab(provider, kDefaultSlabMaxSize);
  const std::size_t big = class_index(slab, 64 * KiB);
  std::vector<void*> blocks;
  for (int i = 0; i < 32; ++i) blocks.push_back(slab.allocate(64 * KiB, 0));  // refills of 2: the magazine ends empty
  const std::uint64_t before = slab.class_depot_returns(big);
  for (void* p : blocks) slab.deallocate(p, 64 * KiB, 0);
  // 4 frees fill the magazine; each second free of the 28 after them finds it full.
  EXPECT_EQ(slab.class_depot_returns(big) - before, 14u);
  const AllocatorStats s = slab.stats();
  EXPECT_EQ(s.deallocations, 32u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(slab.free_bytes_kept(), slab.empty_slab_bytes() + 4 * 64 * KiB) << "the magazine keeps 4 blocks";
  slab.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

}  // namespace
}  // namespace gpushim
