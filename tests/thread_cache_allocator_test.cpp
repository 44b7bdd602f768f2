// What is special about the per-thread caches (allocators/thread_cache_allocator.h); what every backend
// must do, they pass in tests/allocator_conformance_test.cpp ("<backend>_thread_cached").
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "allocators/slab_allocator.h"
#include "allocators/thread_cache_allocator.h"
#include "allocators/vmm_arena.h"
#include "providers/host_provider.h"
#include "tests/forwarding_allocator.h"

namespace gpushim {
namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

// The arenas of these tests: `reserve` of address space, growing by what a request needs (2 MiB steps,
// so any growth too many shows); `keep_nothing_idle`: release_cached() gives every idle chunk back, so
// a test can see every block back in the arena.
VmmArenaOptions arena_options(std::size_t reserve, bool keep_nothing_idle) {
  VmmArenaOptions o;
  o.reserve = reserve;
  o.grow_step = 2 * MiB;
  if (keep_nothing_idle) o.release_threshold = 0;
  return o;
}

// A context synchronization's gather (router.cpp, gather_idle_blocks): where the arena's release is due
// counting what the caches keep and `held_elsewhere` more, every layer hands its blocks in.
bool gather_where_due(Allocator& stack, std::uint64_t held_elsewhere) {
  if (!stack.release_due_with(held_elsewhere)) return false;
  stack.hand_in_kept_blocks();
  return true;
}

class ThreadCacheTest : public ::testing::Test {
 protected:
  ThreadCacheTest() {
    cache_ = std::make_unique<ThreadCacheAllocator>(
        std::make_unique<VmmArena>(provider_, arena_options(512 * MiB, /*keep_nothing_idle=*/true)));
  }
  ~ThreadCacheTest() override {
    cache_.reset();
    EXPECT_EQ(provider_.bytes_mapped(), 0u) << "blocks left in a cache leaked on destruction";
  }
  HostProvider provider_{HostProvider::kDefaultGranularity, 256 * MiB};
  std::unique_ptr<ThreadCacheAllocator> cache_;
};

TEST_F(ThreadCacheTest, ClassesRoundUpByAtMostOneEighthAndCoverEverySize) {
  std::size_t previous = 0;
  for (std::size_t bytes = 1; bytes <= ThreadCacheAllocator::kMaxCachedBytes; bytes += bytes / 64 + 1) {
    const std::size_t c = ThreadCacheAllocator::class_bytes_for(bytes);
    ASSERT_GE(c, bytes);
    ASSERT_EQ(c % kMinAlignment, 0u) << bytes;
    ASSERT_GE(c, previous) << "classes grow with the request";
    if (bytes > 4 * KiB) {
      ASSERT_LE(c - bytes, bytes / 8) << bytes;
    }
    previous = c;
  }
  EXPECT_EQ(ThreadCacheAllocator::class_bytes_for(ThreadCacheAllocator::kMaxCachedBytes),
            ThreadCacheAllocator::kMaxCachedBytes);
  EXPECT_EQ(ThreadCacheAllocator::class_bytes_for(3 * MiB + 1), 3 * MiB + 1) << "larger requests pass through";
}

TEST_F(ThreadCacheTest, AFreedBlockServesTheSameClassOnlyAndCountsAsCached) {
  void* p = cache_->allocate(5000, 0);
  ASSERT_NE(p, nullptr);
  cache_->deallocate(p, 5000, 0);
  EXPECT_EQ(cache_->cached_blocks(), 1u);
  AllocatorStats s = cache_->stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_GE(s.bytes_cached, ThreadCacheAllocator::class_bytes_for(5000));

  // 9000 B rounds to another class: the cached 5 KiB block is too small for it and must not come back.
  void* other = cache_->allocate(9000, 0);
  ASSERT_NE(other, nullptr);
  EXPECT_NE(other, p);
  std::memset(other, 0xab, 9000);
  // 4700 B rounds to the cached block's class (5 KiB): it comes back, whole.
  void* again = cache_->allocate(4700, 0);
  EXPECT_EQ(again, p);
  std::memset(again, 0xcd, ThreadCacheAllocator::class_bytes_for(4700));
  s = cache_->stats();
  EXPECT_EQ(s.bytes_in_use, 9000u + 4700u);
  EXPECT_EQ(s.allocations, 3u);
  cache_->deallocate(other, 9000, 0);
  cache_->deallocate(again, 4700, 0);
  s = cache_->stats();
  EXPECT_EQ(s.deallocations, 3u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
}

TEST_F(ThreadCacheTest, AThreadKeepsAtMostItsBoundAndTheRestGoesToTheBackend) {
  std::vector<void*> blocks;
  for (int i = 0; i < 64; ++i) blocks.push_back(cache_->allocate(256 * KiB, 0));
  for (void* p : blocks) cache_->deallocate(p, 256 * KiB, 0);
  const std::size_t per_class = ThreadCacheAllocator::kClassBytes / (256 * KiB);
  EXPECT_EQ(cache_->cached_blocks(), per_class);
  EXPECT_LE(cache_->stats().bytes_cached, provider_.bytes_mapped());
  EXPECT_EQ(cache_->stats().bytes_in_use, 0u);
}

// An arena that counts the frees it is given, one by one and in batches (a batch's blocks do not count
// as frees one by one: the forwarded batch reaches the arena's own deallocate_batch).
struct CountingArena : testing::ForwardingAllocator {
  using ForwardingAllocator::ForwardingAllocator;
  const char* name() const noexcept override { return "vmm"; }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override {
    ++single_calls;
    inner().deallocate(p, bytes, stream);
  }
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override {
    ++batch_calls;
    batch_blocks += count;
    inner().deallocate_batch(blocks, count);
  }
  int single_calls = 0, batch_calls = 0;
  std::size_t batch_blocks = 0;
};

// A thread cache whose large slots always park, over a CountingArena.
struct CountedCache {
  static std::unique_ptr<CountingArena> make_arena(MemoryProvider& provider, CountingArena** counted) {
    auto arena = std::make_unique<CountingArena>(
        std::make_unique<VmmArena>(provider, arena_options(512 * MiB, /*keep_nothing_idle=*/true)));
    *counted = arena.get();
    return arena;
  }
  HostProvider provider{HostProvider::kDefaultGranularity, 256 * MiB};
  CountingArena* counted = nullptr;
  ThreadCacheAllocator cache{make_arena(provider, &counted), ThreadCacheAllocator::LargeSlots::always};
};

// A batch of blocks handed back together (the fence queue's give-back, Allocator::deallocate_batch):
// the small ones fill the calling thread's cache as one-by-one frees would, and everything it does not
// keep, large blocks included, reaches the backend in one batch call, never the caller's large slots.
TEST(ThreadCacheBatch, KeepsWhatTheCacheHoldsAndPassesTheRestInOneCall) {
  CountedCache counted_cache;
  CountingArena& counted = *counted_cache.counted;
  ThreadCacheAllocator& cache = counted_cache.cache;
  std::vector<BlockToFree> blocks;
  constexpr int kSmall = 40, kLarge = 6;
  for (int i = 0; i < kSmall; ++i) blocks.push_back({cache.allocate(256 * KiB - 100, 0), 256 * KiB - 100, 0});
  for (int i = 0; i < kLarge; ++i) blocks.push_back({cache.allocate(3 * MiB, 0), 3 * MiB, 0});
  const AllocatorStats before = cache.inner().stats();
  cache.deallocate_batch(blocks.data(), blocks.size());
  const std::size_t per_class = ThreadCacheAllocator::kClassBytes / (256 * KiB);
  EXPECT_EQ(cache.cached_blocks(), per_class) << "the cache keeps what a free one by one would";
  EXPECT_EQ(cache.cached_large_blocks(), 0u) << "another thread's large blocks are not parked";
  EXPECT_EQ(counted.batch_calls, 1);
  EXPECT_EQ(counted.batch_blocks, kSmall - per_class + kLarge);
  const AllocatorStats after = cache.stats();
  EXPECT_EQ(after.bytes_in_use, 0u);
  EXPECT_EQ(after.internal_waste, 0u) << "the classes' rounding is dropped as by deallocate()";
  EXPECT_EQ(cache.inner().stats().deallocations, before.deallocations + kSmall - per_class + kLarge);
  EXPECT_EQ(cache.inner().stats().bytes_in_use, per_class * (256 * KiB)) << "the cached ones, at their class size";
  cache.release_cached();
}

// The out-of-memory path: release_cached() on one thread gets back what other, idle threads cache, in
// their classes and their large slots.
TEST_F(ThreadCacheTest, ReleaseCachedFromAnotherThreadEmptiesEveryThreadsCache) {
  constexpr int kThreads = 4;
  std::atomic<int> allocated{0}, parked{0};
  std::atomic<bool> released{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<void*> blocks;
      for (int i = 0; i < 8; ++i) blocks.push_back(cache_->allocate(KiB * (t + 1), 0));
      const std::size_t large = 4 * MiB + static_cast<std::size_t>(t) * MiB;
      void* a = cache_->allocate(large, 0);
      void* b = cache_->allocate(large + KiB, 0);
      // Free only once every thread has allocated: a miss may empty other threads' large slots.
      allocated.fetch_add(1);
      while (allocated.load() < kThreads) std::this_thread::yield();
      for (void* p : blocks) cache_->deallocate(p, KiB * (t + 1), 0);
      cache_->deallocate(a, large, 0);
      cache_->deallocate(b, large + KiB, 0);
      parked.fetch_add(1);
      while (!released.load()) std::this_thread::yield();  // alive, cache full, no call of its own
    });
  }
  while (parked.load() < kThreads) std::this_thread::yield();
  EXPECT_EQ(cache_->cached_large_blocks(), std::size_t{2 * kThreads});
  EXPECT_EQ(cache_->cached_blocks(), std::size_t{10 * kThreads});
  EXPECT_GT(provider_.bytes_mapped(), 0u);
  cache_->release_cached();
  EXPECT_EQ(cache_->cached_blocks(), 0u);
  EXPECT_EQ(provider_.bytes_mapped(), 0u) << "a cached block kept memory mapped";
  EXPECT_EQ(cache_->stats().bytes_cached, 0u);
  released.store(true);
  for (std::thread& t : threads) t.join();
}

TEST_F(ThreadCacheTest, AnExitingThreadGivesItsBlocksBackForOthersToUse) {
  std::set<void*> freed_by_thread;
  std::thread worker([&] {
    std::vector<void*> blocks;
    for (int i = 0; i < 4; ++i) blocks.push_back(cache_->allocate(64 * KiB, 0));
    for (void* p : blocks) {
      freed_by_thread.insert(p);
      cache_->deallocate(p, 64 * KiB, 0);
    }
  });
  worker.join();
  EXPECT_EQ(cache_->cached_blocks(), 4u) << "the exited thread's blocks are kept for others";
  EXPECT_EQ(cache_->stats().bytes_in_use, 0u);
  // This thread's misses take them first.
  void* p = cache_->allocate(64 * KiB, 0);
  EXPECT_EQ(freed_by_thread.count(p), 1u);
  EXPECT_EQ(cache_->cached_blocks(), 3u);
  cache_->deallocate(p, 64 * KiB, 0);
  cache_->release_cached();
  EXPECT_EQ(cache_->cached_blocks(), 0u);
  EXPECT_EQ(provider_.bytes_mapped(), 0u);
}

// A forked child has only the forking thread; what other threads cache stays reachable, and no lock one
// of them held can stop the child. The other thread is alive, its cache full, at the fork.
TEST_F(ThreadCacheTest, AForkedChildCanAllocateAndReleaseWhatOtherThreadsCached) {
  std::atomic<bool> parked{false}, release{false};
  std::thread other([&] {
    cache_->deallocate(cache_->allocate(8 * KiB, 0), 8 * KiB, 0);
    parked.store(true);
    while (!release.load()) std::this_thread::yield();
  });
  while (!parked.load()) std::this_thread::yield();
  const pid_t child = fork();
  if (child == 0) {
    void* p = cache_->allocate(KiB, 0);
    cache_->deallocate(p, KiB, 0);
    cache_->release_cached();
    _exit(p != nullptr && cache_->cached_blocks() == 0 ? 0 : 1);
  }
  release.store(true);
  other.join();
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

// Many threads allocate, pass blocks to each other and free them, while another thread empties every
// cache (or, with `gather`, every block the caches keep where the arena's release is due, as a
// context synchronization does): no block is handed out twice (each carries its owner's pattern), and
// the counts add up. `size_of` draws a request from a random number; `max_live` blocks per thread stay live.
void expect_cross_thread_frees_with_concurrent_releases(ThreadCacheAllocator& cache, const HostProvider& provider,
                                                        int thread_count, int rounds, std::size_t max_live,
                                                        std::size_t (*size_of)(unsigned), bool gather = false) {
  struct Block {
    void* p;
    std::size_t bytes;
    unsigned char tag;
  };
  std::vector<std::vector<Block>> handoff(thread_count);
  std::vector<std::mutex> handoff_locks(thread_count);
  std::atomic<int> corrupted{0}, failures{0};
  std::atomic<bool> done{false};
  std::atomic<int> gathers{0};  // gathers that were due
  auto verify = [&](const Block& b) {
    const auto* bytes = static_cast<const unsigned char*>(b.p);
    if (bytes[0] != b.tag || bytes[b.bytes - 1] != b.tag) corrupted.fetch_add(1);
  };
  std::thread releaser([&] {
    while (!done.load()) {
      if (!gather) cache.release_cached();
      else if (gather_where_due(cache, 0)) gathers.fetch_add(1);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Block> live;
      unsigned seed = 7u + static_cast<unsigned>(t);
      for (int i = 0; i < rounds; ++i) {
        seed = seed * 1103515245u + 12345u;
        const std::size_t bytes = size_of(seed);
        void* p = cache.allocate(bytes, 0);
        if (!p) {
          failures.fetch_add(1);
          continue;
        }
        const auto tag = static_cast<unsigned char>(t * 31 + i);
        std::memset(p, tag, bytes);
        live.push_back({p, bytes, tag});
        if (live.size() > max_live) {
          Block b = live[seed % live.size()];
          live.erase(std::find_if(live.begin(), live.end(), [&](const Block& x) { return x.p == b.p; }));
          if (seed & 1) {  // freed here
            verify(b);
            cache.deallocate(b.p, b.bytes, 0);
          } else {  // freed by the next thread
            std::lock_guard<std::mutex> guard(handoff_locks[(t + 1) % thread_count]);
            handoff[(t + 1) % thread_count].push_back(b);
          }
        }
        std::vector<Block> mine;
        {
          std::lock_guard<std::mutex> guard(handoff_locks[t]);
          mine.swap(handoff[t]);
        }
        for (const Block& b : mine) {
          verify(b);
          cache.deallocate(b.p, b.bytes, 0);
        }
      }
      for (const Block& b : live) {
        verify(b);
        cache.deallocate(b.p, b.bytes, 0);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  done.store(true);
  releaser.join();
  for (int t = 0; t < thread_count; ++t)
    for (const Block& b : handoff[t]) {
      verify(b);
      cache.deallocate(b.p, b.bytes, 0);
    }
  EXPECT_EQ(corrupted.load(), 0) << "a block was handed to two owners";
  EXPECT_EQ(failures.load(), 0);
  if (gather) {
    EXPECT_GT(gathers.load(), 0) << "no gather was due: the test took nothing from the threads";
  }
  const AllocatorStats s = cache.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
  EXPECT_EQ(s.allocations, s.deallocations);
  EXPECT_EQ(s.allocations, static_cast<std::uint64_t>(thread_count) * rounds);
  cache.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

TEST_F(ThreadCacheTest, ManyThreadsAndCrossThreadFreesWithConcurrentReleases) {
  expect_cross_thread_frees_with_concurrent_releases(*cache_, provider_, 8, 3000, 16,
                                                     [](unsigned seed) { return 1 + (seed >> 8) % (96 * KiB); });
}

// The same with large blocks of a few sizes (exact-size slots, flushes before growth, the depot). A
// thread that has finished its rounds keeps the blocks others hand it until the end: up to a few
// hundred MiB live, so a provider larger than the fixture's.
TEST(ThreadCacheLargeBytes, ManyThreadsAndCrossThreadFreesOfLargeBlocksWithConcurrentReleases) {
  HostProvider provider(HostProvider::kDefaultGranularity, 2048 * MiB);  // two bytes of each block touched
  ThreadCacheAllocator cache(std::make_unique<VmmArena>(provider, arena_options(4096 * MiB, true)));
  expect_cross_thread_frees_with_concurrent_releases(cache, provider, 4, 2000, 3, [](unsigned seed) {
    return MiB + 1 + ((seed >> 8) % 4) * (MiB / 2) + ((seed >> 4) & 1) * KiB;
  });
}

// ... and with the arena's release due at every ask (threshold and delay 0), so that the gathers take
// the cached blocks while their owners cache and take them.
void expect_cross_thread_frees_with_concurrent_gathers(std::size_t max_live, std::size_t (*size_of)(unsigned)) {
  HostProvider provider(HostProvider::kDefaultGranularity, 2048 * MiB);
  VmmArenaOptions o = arena_options(4096 * MiB, /*keep_nothing_idle=*/true);
  o.release_delay_ns = 0;
  ThreadCacheAllocator cache(std::make_unique<VmmArena>(provider, o));
  expect_cross_thread_frees_with_concurrent_releases(cache, provider, 4, 2000, max_live, size_of, /*gather=*/true);
}

TEST(ThreadCacheLargeBytes, ManyThreadsAndCrossThreadFreesOfLargeBlocksWithConcurrentGathers) {
  expect_cross_thread_frees_with_concurrent_gathers(
      3, [](unsigned seed) { return MiB + 1 + ((seed >> 8) % 4) * (MiB / 2) + ((seed >> 4) & 1) * KiB; });
}

// ... with small and large blocks together, so that the gathers take classes and slots alike.
TEST(ThreadCacheLargeBytes, ManyThreadsAndCrossThreadFreesOfSmallAndLargeBlocksWithConcurrentGathers) {
  expect_cross_thread_frees_with_concurrent_gathers(6, [](unsigned seed) {
    return (seed >> 12) & 1 ? 1 + (seed >> 8) % (96 * KiB) : MiB + 1 + ((seed >> 8) % 4) * (MiB / 2);
  });
}

// ---- blocks above kMaxCachedBytes: exact-size slots ----

TEST_F(ThreadCacheTest, ALargeBlockComesBackAtItsExactSizeOnlyWithoutTheBackend) {
  const std::size_t bytes = 3 * MiB + 100;
  void* p = cache_->allocate(bytes, 0);
  ASSERT_NE(p, nullptr);
  cache_->deallocate(p, bytes, 0);
  EXPECT_EQ(cache_->cached_large_blocks(), 1u);
  const AllocatorStats backend = cache_->inner().stats();

  EXPECT_EQ(cache_->allocate(bytes, 0), p) << "the same size is a hit";
  EXPECT_EQ(cache_->inner().stats().allocations, backend.allocations) << "a hit must not reach the backend";
  EXPECT_EQ(cache_->inner().stats().deallocations, backend.deallocations);
  cache_->deallocate(p, bytes, 0);

  // 412 B less rounds to the same 512 B multiple in the arena, yet is another size: a miss, and the
  // parked block goes back to the backend before it is asked.
  void* smaller = cache_->allocate(bytes - 412, 0);
  ASSERT_NE(smaller, nullptr);
  EXPECT_EQ(cache_->inner().stats().allocations, backend.allocations + 1) << "exact size only";
  EXPECT_EQ(cache_->cached_large_blocks(), 0u) << "a miss gives the thread's slots back first";
  EXPECT_EQ(cache_->inner().stats().bytes_in_use, bytes - 412) << "the backend holds the request alone";
  cache_->deallocate(smaller, bytes - 412, 0);
}

// A miss gives the thread's parked large blocks to the backend in one batch call, so a backend with one
// lock takes it once for all of them, not once a block (ThreadCacheAllocator::give_to_backend).
TEST(ThreadCacheLargeBytes, AMissGivesTheThreadsSlotsBackInOneBatch) {
  CountedCache counted_cache;
  CountingArena& counted = *counted_cache.counted;
  ThreadCacheAllocator& cache = counted_cache.cache;
  const auto size = [](std::size_t i) { return 2 * MiB + i * kMinAlignment; };
  std::vector<void*> blocks;
  for (std::size_t i = 0; i < ThreadCacheAllocator::kLargeSlots; ++i) blocks.push_back(cache.allocate(size(i), 0));
  for (std::size_t i = 0; i < blocks.size(); ++i) cache.deallocate(blocks[i], size(i), 0);
  ASSERT_EQ(cache.cached_large_blocks(), ThreadCacheAllocator::kLargeSlots);
  ASSERT_EQ(counted.single_calls + counted.batch_calls, 0) << "parking reached the backend";
  const std::size_t other = size(ThreadCacheAllocator::kLargeSlots);
  void* p = cache.allocate(other, 0);  // a miss
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(cache.cached_large_blocks(), 0u);
  EXPECT_EQ(counted.single_calls, 0) << "a parked block went back on its own";
  EXPECT_EQ(counted.batch_calls, 1);
  EXPECT_EQ(counted.batch_blocks, ThreadCacheAllocator::kLargeSlots);
  EXPECT_EQ(cache.inner().stats().bytes_in_use, other) << "the backend holds the request alone";
  cache.deallocate(p, other, 0);
  cache.release_cached();
  EXPECT_EQ(cache.stats().bytes_in_use, 0u);
}

TEST_F(ThreadCacheTest, ParkedLargeBlocksCountAsCachedAndCallsCountOnce) {
  const std::size_t bytes = 5 * MiB;
  for (int i = 0; i < 3; ++i) cache_->deallocate(cache_->allocate(bytes, 0), bytes, 0);
  AllocatorStats s = cache_->stats();
  EXPECT_EQ(s.allocations, 3u);
  EXPECT_EQ(s.deallocations, 3u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
  EXPECT_EQ(s.bytes_cached, s.bytes_reserved) << "the parked block is free memory to cuMemGetInfo";
  EXPECT_GE(s.bytes_cached, bytes);
  void* p = cache_->allocate(bytes, 0);
  s = cache_->stats();
  EXPECT_EQ(s.bytes_in_use, bytes);
  EXPECT_EQ(s.bytes_cached, s.bytes_reserved - bytes);
  cache_->deallocate(p, bytes, 0);
  cache_->release_cached();
  s = cache_->stats();
  EXPECT_EQ(s.allocations, 4u);
  EXPECT_EQ(s.deallocations, 4u) << "a flush to the backend is not a program free";
  EXPECT_EQ(s.bytes_cached, 0u);
  EXPECT_EQ(provider_.bytes_mapped(), 0u);
}

TEST_F(ThreadCacheTest, AThreadParksAtMostItsSlotsOfLargeBlocks) {
  std::vector<void*> blocks;
  for (std::size_t i = 0; i < ThreadCacheAllocator::kLargeSlots + 2; ++i)
    blocks.push_back(cache_->allocate(2 * MiB + i * kMinAlignment, 0));
  for (std::size_t i = 0; i < blocks.size(); ++i) cache_->deallocate(blocks[i], 2 * MiB + i * kMinAlignment, 0);
  EXPECT_EQ(cache_->cached_large_blocks(), ThreadCacheAllocator::kLargeSlots);
  EXPECT_EQ(cache_->inner().stats().deallocations, 2u) << "the oldest two went to the backend";
  // The newest are kept: the last size freed is a hit.
  const AllocatorStats backend = cache_->inner().stats();
  void* last = cache_->allocate(2 * MiB + (blocks.size() - 1) * kMinAlignment, 0);
  EXPECT_EQ(last, blocks.back());
  EXPECT_EQ(cache_->inner().stats().allocations, backend.allocations);
  cache_->deallocate(last, 2 * MiB + (blocks.size() - 1) * kMinAlignment, 0);
}

// A thread's own evictions and misses give parked blocks to the backend; those are not program frees,
// while the thread runs (its cache counts them) nor after it exits (its count retires with it).
TEST_F(ThreadCacheTest, AThreadsOwnFlushesAreNotProgramFreesBeforeOrAfterItExits) {
  constexpr std::size_t kBlocks = ThreadCacheAllocator::kLargeSlots + 2;
  AllocatorStats while_running;
  std::uint64_t backend_frees = 0;
  std::thread thread([&] {
    std::vector<void*> blocks;
    for (std::size_t i = 0; i < kBlocks; ++i) blocks.push_back(cache_->allocate(2 * MiB + i * kMinAlignment, 0));
    for (std::size_t i = 0; i < kBlocks; ++i) cache_->deallocate(blocks[i], 2 * MiB + i * kMinAlignment, 0);
    void* other = cache_->allocate(3 * MiB, 0);  // a miss: the thread's parked blocks go to the backend first
    cache_->deallocate(other, 3 * MiB, 0);
    while_running = cache_->stats();
    backend_frees = cache_->inner().stats().deallocations;
  });
  thread.join();
  EXPECT_EQ(backend_frees, kBlocks) << "the evicted two and the slots the miss gave back";
  EXPECT_EQ(while_running.allocations, kBlocks + 1);
  EXPECT_EQ(while_running.deallocations, kBlocks + 1);
  const AllocatorStats after_exit = cache_->stats();
  EXPECT_EQ(after_exit.allocations, kBlocks + 1);
  EXPECT_EQ(after_exit.deallocations, kBlocks + 1);
  cache_->release_cached();  // the exited thread's parked block, from the depot
  EXPECT_EQ(cache_->stats().deallocations, kBlocks + 1);
}

// The slab maps a dedicated run for each block above 1 MiB and unmaps it at its free: a parked block
// would hold memory the backend gives back at once, so large blocks pass through.
TEST(ThreadCacheLargeBytes, LargeBlocksPassThroughWhereTheBackendGivesTheirMemoryBack) {
  HostProvider provider;
  ThreadCacheAllocator cache(std::make_unique<SlabAllocator>(provider, MiB));
  EXPECT_FALSE(cache.inner().can_allocate_without_growing());
  void* p = cache.allocate(3 * MiB, 0);
  ASSERT_NE(p, nullptr);
  cache.deallocate(p, 3 * MiB, 0);
  EXPECT_EQ(cache.cached_large_blocks(), 0u);
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

TEST(ThreadCacheLargeBytes, AThreadParksAtMostItsByteBound) {
  constexpr std::size_t GiB = 1024 * MiB;
  HostProvider provider(HostProvider::kDefaultGranularity, 8 * GiB);  // mapped, never touched
  VmmArenaOptions o;
  o.reserve = 16 * GiB;
  ThreadCacheAllocator cache(std::make_unique<VmmArena>(provider, o));
  const std::size_t big = ThreadCacheAllocator::kMaxLargeBytesPerThread / 2 + MiB;
  void* a = cache.allocate(big, 0);
  void* b = cache.allocate(big + MiB, 0);
  void* over = cache.allocate(ThreadCacheAllocator::kMaxLargeBytesPerThread + MiB, 0);
  ASSERT_TRUE(a && b && over);
  cache.deallocate(over, ThreadCacheAllocator::kMaxLargeBytesPerThread + MiB, 0);
  EXPECT_EQ(cache.cached_large_blocks(), 0u) << "a block above the bound passes through";
  cache.deallocate(a, big, 0);
  cache.deallocate(b, big + MiB, 0);
  EXPECT_EQ(cache.cached_large_blocks(), 1u) << "two would exceed the bound: the older one left";
  EXPECT_LE(cache.stats().bytes_cached - cache.inner().stats().bytes_cached,
            ThreadCacheAllocator::kMaxLargeBytesPerThread);
  cache.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

// A context synchronization asks whether the arena's release is due counting the blocks kept in front of
// it (Allocator::release_due_with): the caches' blocks, parked large ones and classes, of live threads
// and of exited ones (the depot), with what the router holds (`held_elsewhere`). Where due, they go to
// the arena (hand_in_kept_blocks); where not, they stay.
TEST(ThreadCacheLargeBytes, CachedBlocksGoToTheArenaWhereItsReleaseIsDueCountingThem) {
  // Long: the other thread's park and the second ask must fall within one delay on a loaded machine.
  constexpr std::uint64_t kDelayNs = 1'000'000'000;
  HostProvider provider;
  VmmArenaOptions o = arena_options(512 * MiB, /*keep_nothing_idle=*/false);
  o.release_threshold = 16 * MiB;
  o.release_delay_ns = kDelayNs;
  ThreadCacheAllocator cache(std::make_unique<VmmArena>(provider, o));  // parks always
  void* a = cache.allocate(5 * MiB, 0);
  void* b = cache.allocate(MiB, 0);
  void* c = cache.allocate(MiB, 0);
  ASSERT_TRUE(a && b && c);
  cache.deallocate(a, 5 * MiB, 0);
  cache.deallocate(b, MiB, 0);
  cache.deallocate(c, MiB, 0);
  ASSERT_EQ(cache.cached_large_blocks(), 1u);
  ASSERT_EQ(cache.cached_blocks(), 3u) << "the two 1 MiB blocks are not in their class";
  // What the arena caches itself, and what must be in front of it for its release to be due: above
  // the threshold, so the 7 MiB cached here and `short_of` more make exactly the threshold.
  const std::uint64_t arena_cached = cache.inner().stats().bytes_cached;
  ASSERT_LE(arena_cached + 7 * MiB, o.release_threshold);
  const std::uint64_t short_of = o.release_threshold - arena_cached - 7 * MiB;
  EXPECT_FALSE(gather_where_due(cache, short_of)) << "due at the threshold itself";
  EXPECT_EQ(cache.cached_blocks(), 3u) << "taken where nothing was due";
  EXPECT_TRUE(gather_where_due(cache, short_of + 1)) << "the classes' 2 MiB or the parked 5 MiB did not count";
  EXPECT_EQ(cache.cached_blocks(), 0u) << "due, and blocks stayed in the cache";
  EXPECT_GE(cache.inner().stats().bytes_cached, arena_cached + 7 * MiB);
  std::thread exiting([&] {
    void* d = cache.allocate(6 * MiB, 0);
    void* e = cache.allocate(64 * KiB, 0);
    ASSERT_TRUE(d && e);
    cache.deallocate(d, 6 * MiB, 0);
    cache.deallocate(e, 64 * KiB, 0);
  });
  exiting.join();
  ASSERT_EQ(cache.cached_blocks(), 2u) << "the exited thread's blocks are not in the depot";
  EXPECT_FALSE(gather_where_due(cache, 16 * MiB)) << "due again within the delay";
  std::this_thread::sleep_for(std::chrono::nanoseconds(kDelayNs + kDelayNs / 4));
  EXPECT_TRUE(gather_where_due(cache, 16 * MiB)) << "not due a delay later";
  EXPECT_EQ(cache.cached_blocks(), 0u) << "the depot's blocks stayed there";
  cache.release_cached();
  EXPECT_EQ(provider.bytes_mapped(), 0u);
}

// Two threads take turns; a turn allocates a block of a size no earlier turn used, frees it, and does
// it again (a hit); a KV cache's growth, one row per turn, handed between threads. Every fourth turn's
// block is small enough for the memory the arena holds besides what the other thread parked. Whatever
// the other thread parked must be given back before the arena grows: the arena maps, turn by turn,
// exactly what it maps with no cache. (Where a thread places a block while another's are parked, they
// act as if still live: a later request may then fit differently than with no cache. Growth is never
// the parked blocks' doing: it happens only where the request does not fit with all of them back.)
TEST(ThreadCacheNoGrowth, TwoThreadsTakingTurnsMapWhatTheArenaMapsWithoutTheCache) {
  auto options = [] { return arena_options(1024 * MiB, /*keep_nothing_idle=*/false); };
  constexpr int kTurns = 60;
  auto sizes_of = [](int turn) {
    const std::size_t a = 2 * MiB + static_cast<std::size_t>(turn) * 300 * KiB + 4096;
    return turn % 4 == 3 ? a / 2 : a;  // above kMaxCachedBytes still
  };
  auto turn_on = [&](Allocator& allocator, int turn) {
    const std::size_t bytes = sizes_of(turn);
    for (int again = 0; again < 2; ++again) {
      void* p = allocator.allocate(bytes, 0);
      ASSERT_NE(p, nullptr);
      allocator.deallocate(p, bytes, 0);
    }
  };

  HostProvider plain_provider(HostProvider::kDefaultGranularity, 1024 * MiB);
  VmmArena plain(plain_provider, options());
  std::vector<std::size_t> plain_mapped;
  for (int turn = 0; turn < kTurns; ++turn) {
    turn_on(plain, turn);
    plain_mapped.push_back(plain_provider.bytes_mapped());
  }

  HostProvider provider(HostProvider::kDefaultGranularity, 1024 * MiB);
  ThreadCacheAllocator cache(std::make_unique<VmmArena>(provider, options()));
  std::vector<std::size_t> mapped;
  std::atomic<int> turn{0};
  std::uint64_t hits = 0;
  auto player = [&](int me) {
    for (;;) {
      int now;
      while ((now = turn.load()) % 2 != me && now < kTurns) std::this_thread::yield();
      if (now >= kTurns) return;
      turn_on(cache, now);
      mapped.push_back(provider.bytes_mapped());
      turn.store(now + 1);
    }
  };
  std::thread first(player, 0), second(player, 1);
  first.join();
  second.join();
  hits = cache.stats().allocations - cache.inner().stats().allocations;
  EXPECT_GE(hits, static_cast<std::uint64_t>(kTurns)) << "the repeated sizes must hit, or this test shows nothing";
  EXPECT_EQ(mapped, plain_mapped) << "blocks parked in one thread made the arena grow for the other";
  EXPECT_EQ(cache.inner().stats().peak_bytes_reserved, plain.stats().peak_bytes_reserved);
}

// Runs steps on threads that stay alive between them (a thread's cache lives as long as the thread):
// step(t) runs on thread t, one at a time, in the order given.
class ThreadSteps {
 public:
  explicit ThreadSteps(int threads) {
    for (int t = 0; t < threads; ++t)
      threads_.emplace_back([this, t] {
        for (;;) {
          std::unique_lock<std::mutex> lock(mutex_);
          ready_.wait(lock, [&] { return stop_ || (job_ && owner_ == t); });
          if (stop_) return;
          job_();
          job_ = nullptr;
          ready_.notify_all();
        }
      });
  }
  ~ThreadSteps() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  void run(int t, std::function<void()> job) {
    std::unique_lock<std::mutex> lock(mutex_);
    owner_ = t;
    job_ = std::move(job);
    ready_.notify_all();
    ready_.wait(lock, [&] { return !job_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::function<void()> job_;
  int owner_ = -1;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// A thread whose parked block another thread's miss took asks for that size again: the arena grows for
// it, rather than it taking a third thread's block in turn. (Else threads looping on one size, more of
// them than blocks mapped, take each other's blocks at every miss, for good.)
TEST_F(ThreadCacheTest, AThreadAskingAgainForASizeTakenFromItGrowsTheBackend) {
  constexpr std::size_t kBytes = 8 * MiB;
  ThreadSteps steps(2);  // 0: the thread robbed, 1: a third thread that parks a block of the same size
  steps.run(0, [&] { cache_->deallocate(cache_->allocate(kBytes, 0), kBytes, 0); });
  void* held = cache_->allocate(kBytes + MiB, 0);  // needs thread 0's block: taken
  ASSERT_NE(held, nullptr);
  EXPECT_EQ(cache_->cached_large_blocks(), 0u);
  steps.run(1, [&] { cache_->deallocate(cache_->allocate(kBytes, 0), kBytes, 0); });
  EXPECT_EQ(cache_->cached_large_blocks(), 1u);
  const std::size_t mapped = provider_.bytes_mapped();
  void* again = nullptr;
  steps.run(0, [&] { again = cache_->allocate(kBytes, 0); });
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(cache_->cached_large_blocks(), 1u) << "the robbed thread took the third thread's block in turn";
  EXPECT_GT(provider_.bytes_mapped(), mapped);
  // Once only: its next new size takes again.
  steps.run(0, [&] {
    cache_->deallocate(again, kBytes, 0);
    void* other = cache_->allocate(kBytes + 2 * MiB, 0);
    EXPECT_NE(other, nullptr);
    cache_->deallocate(other, kBytes + 2 * MiB, 0);
  });
  cache_->deallocate(held, kBytes + MiB, 0);
}

// Short of memory there, the blocks parked elsewhere come back after all and the request is tried once
// more; the failure the backend counted on the way is not the caller's.
TEST_F(ThreadCacheTest, GrowingForATakenSizeTakesParkedBlocksBeforeOutOfMemory) {
  constexpr std::size_t kBytes = 100 * MiB;  // three do not fit under the provider's 256 MiB
  ThreadSteps steps(2);
  steps.run(0, [&] { cache_->deallocate(cache_->allocate(kBytes, 0), kBytes, 0); });
  void* held = cache_->allocate(kBytes + MiB, 0);
  ASSERT_NE(held, nullptr);
  steps.run(1, [&] { cache_->deallocate(cache_->allocate(kBytes, 0), kBytes, 0); });
  ASSERT_EQ(cache_->cached_large_blocks(), 1u);
  void* again = nullptr;
  steps.run(0, [&] { again = cache_->allocate(kBytes, 0); });
  EXPECT_NE(again, nullptr) << "a parked block made the backend run out of memory";
  EXPECT_EQ(cache_->cached_large_blocks(), 0u);
  EXPECT_EQ(cache_->stats().failed_allocations, 0u);
  steps.run(0, [&] {
    if (again) cache_->deallocate(again, kBytes, 0);
  });
  cache_->deallocate(held, kBytes + MiB, 0);
}

// A block parked in another thread, or left by an exited thread, serves a request the arena could only
// serve by growing past the provider's cap: it must be handed back first, not reported out of memory.
TEST_F(ThreadCacheTest, BlocksParkedElsewhereAreGivenBackBeforeTheBackendMustGrow) {
  const std::size_t bytes = 160 * MiB;  // two do not fit under the provider's 256 MiB
  std::atomic<bool> parked{false}, done{false};
  std::thread other([&] {
    cache_->deallocate(cache_->allocate(bytes, 0), bytes, 0);
    parked.store(true);
    while (!done.load()) std::this_thread::yield();
  });
  while (!parked.load()) std::this_thread::yield();
  EXPECT_EQ(cache_->cached_large_blocks(), 1u);
  void* p = cache_->allocate(bytes + MiB, 0);
  EXPECT_NE(p, nullptr) << "the other thread's parked block was not given back";
  EXPECT_EQ(cache_->cached_large_blocks(), 0u);
  if (p) cache_->deallocate(p, bytes + MiB, 0);
  done.store(true);
  other.join();

  // Left by an exited thread: the depot's large blocks likewise.
  std::thread exiting([&] { cache_->deallocate(cache_->allocate(bytes, 0), bytes, 0); });
  exiting.join();
  cache_->release_cached();  // this thread's own parked block: gone, so only the depot's remains
  std::thread leaver([&] { cache_->deallocate(cache_->allocate(bytes, 0), bytes, 0); });
  leaver.join();
  EXPECT_EQ(cache_->cached_large_blocks(), 1u) << "an exited thread's block waits in the depot";
  p = cache_->allocate(bytes + 2 * MiB, 0);
  EXPECT_NE(p, nullptr) << "the depot's block was not given back before growing";
  if (p) cache_->deallocate(p, bytes + 2 * MiB, 0);
}

TEST_F(ThreadCacheTest, AnExitingThreadsLargeBlocksServeOthersAtTheirExactSize) {
  void* given = nullptr;
  std::thread worker([&] {
    given = cache_->allocate(6 * MiB, 0);
    cache_->deallocate(given, 6 * MiB, 0);
  });
  worker.join();
  EXPECT_EQ(cache_->cached_large_blocks(), 1u);
  EXPECT_EQ(cache_->stats().bytes_in_use, 0u);
  EXPECT_GE(cache_->stats().bytes_cached, 6 * MiB);
  const AllocatorStats backend = cache_->inner().stats();
  void* p = cache_->allocate(6 * MiB, 0);
  EXPECT_EQ(p, given);
  EXPECT_EQ(cache_->inner().stats().allocations, backend.allocations) << "served from the depot";
  EXPECT_EQ(cache_->stats().allocations, 2u);
  cache_->deallocate(p, 6 * MiB, 0);
}

// A fenced free reaches the backend from whichever thread polls the fences: a large block freed on
// another thread lands in that thread's slots and serves it.
TEST_F(ThreadCacheTest, ALargeBlockFreedOnAnotherThreadServesThatThread) {
  void* p = cache_->allocate(7 * MiB, 0);
  ASSERT_NE(p, nullptr);
  std::thread other([&] {
    cache_->deallocate(p, 7 * MiB, 0);
    EXPECT_EQ(cache_->allocate(7 * MiB, 0), p);
    cache_->deallocate(p, 7 * MiB, 0);
  });
  other.join();
  EXPECT_EQ(cache_->stats().bytes_in_use, 0u);
  EXPECT_EQ(cache_->stats().allocations, 2u);
}

// LargeSlots::while_contended (GPUSHIM_LARGE_SLOTS=auto), over an arena whose lock waits the test
// makes up: a backend call during which the count moves is a call that found the lock held.
class MadeUpWaits final : public testing::ForwardingAllocator {
 public:
  using ForwardingAllocator::ForwardingAllocator;
  const char* name() const noexcept override { return "made-up-waits"; }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override {
    ++allocations;
    if (wait_in_next_call) waits.fetch_add(1), wait_in_next_call = false;
    return inner().allocate(bytes, stream);
  }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override {
    if (wait_in_next_call) waits.fetch_add(1), wait_in_next_call = false;
    inner().deallocate(p, bytes, stream);
  }
  const std::atomic<std::uint64_t>* lock_wait_counter() const noexcept override { return &waits; }
  std::atomic<std::uint64_t> waits{0};
  bool wait_in_next_call = false;
  int allocations = 0;
};

class ContendedLargeSlots : public ::testing::Test {
 protected:
  ContendedLargeSlots() {
    auto backend = std::make_unique<MadeUpWaits>(std::make_unique<VmmArena>(provider_, arena_options(512 * MiB, true)));
    backend_ = backend.get();
    cache_ = std::make_unique<ThreadCacheAllocator>(std::move(backend),
                                                    ThreadCacheAllocator::LargeSlots::while_contended);
  }
  HostProvider provider_{HostProvider::kDefaultGranularity, 256 * MiB};
  MadeUpWaits* backend_ = nullptr;
  std::unique_ptr<ThreadCacheAllocator> cache_;
};

// One thread alone never finds the lock held: its large blocks go back to the arena at their free, so
// it places them as with no cache (the PyTorch workloads' peaks, docs/benchmarks.md).
TEST_F(ContendedLargeSlots, AThreadThatNeverWaitsParksNothing) {
  for (int i = 0; i < 100; ++i) {
    void* p = cache_->allocate(4 * MiB, 0);
    ASSERT_NE(p, nullptr);
    cache_->deallocate(p, 4 * MiB, 0);
    ASSERT_EQ(cache_->cached_large_blocks(), 0u);
  }
  EXPECT_EQ(backend_->allocations, 100);
}

// A large call that found the lock held starts parking; the thread's pairs then skip the arena; after
// kCalmCallsToStopParking large backend calls in a row without a wait, it stops, and what it parked
// went back at those misses.
TEST_F(ContendedLargeSlots, AWaitStartsParkingAndCalmCallsEndIt) {
  backend_->wait_in_next_call = true;
  void* p = cache_->allocate(4 * MiB, 0);
  ASSERT_NE(p, nullptr);
  cache_->deallocate(p, 4 * MiB, 0);
  EXPECT_EQ(cache_->cached_large_blocks(), 1u) << "a thread that waited for the arena did not park";
  for (int i = 0; i < 100; ++i) {
    void* q = cache_->allocate(4 * MiB, 0);
    ASSERT_EQ(q, p);
    cache_->deallocate(q, 4 * MiB, 0);
  }
  EXPECT_EQ(backend_->allocations, 1) << "parked pairs reached the arena";

  // Misses of other sizes: each gives the parked blocks back first; none of them waits.
  for (std::uint32_t i = 0; i < ThreadCacheAllocator::kCalmCallsToStopParking; ++i) {
    const std::size_t bytes = (5 + i % 3) * MiB;
    void* q = cache_->allocate(bytes, 0);
    ASSERT_NE(q, nullptr);
    cache_->deallocate(q, bytes, 0);
  }
  EXPECT_EQ(cache_->cached_large_blocks(), 0u);
  void* q = cache_->allocate(4 * MiB, 0);
  cache_->deallocate(q, 4 * MiB, 0);
  EXPECT_EQ(cache_->cached_large_blocks(), 0u) << "still parking after calm calls";
  // A wait in a free starts it again.
  q = cache_->allocate(4 * MiB, 0);
  backend_->wait_in_next_call = true;
  cache_->deallocate(q, 4 * MiB, 0);
  q = cache_->allocate(4 * MiB, 0);
  cache_->deallocate(q, 4 * MiB, 0);
  EXPECT_EQ(cache_->cached_large_blocks(), 1u);
  cache_->release_cached();
}

// The real arena counts the waits: threads that fight over it end up parking, and most of their pairs
// stop reaching it (without parking, every pair would). Bounded by time, not by a count, so a loaded
// machine only makes it take longer. Most, not nearly all: on a loaded machine (two cores, three other
// busy processes) the four threads often run one at a time for a while, find the arena calm, and rightly
// stop parking until they fight again; 11-25% of their pairs then reached the arena, in 4 of 20 runs.
TEST(ThreadCacheLargeBytes, ThreadsThatFightOverTheArenaParkTheirLargeBlocks) {
  HostProvider provider{HostProvider::kDefaultGranularity, 512 * MiB};
  auto arena = std::make_unique<VmmArena>(provider, arena_options(1024 * MiB, /*keep_nothing_idle=*/false));
  VmmArena* raw = arena.get();
  ThreadCacheAllocator cache(std::move(arena), ThreadCacheAllocator::LargeSlots::while_contended);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> pairs{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        void* p = cache.allocate(4 * MiB, 0);
        ASSERT_NE(p, nullptr);
        cache.deallocate(p, 4 * MiB, 0);
        pairs.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::uint64_t arena_calls_at_switch = 0, pairs_at_switch = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (raw->lock_waits() != 0 && pairs_at_switch == 0) {
      arena_calls_at_switch = raw->stats().allocations;
      pairs_at_switch = pairs.load();
    }
    if (pairs_at_switch != 0 && pairs.load() > pairs_at_switch + 100000) break;
  }
  stop = true;
  for (std::thread& t : threads) t.join();
  ASSERT_NE(raw->lock_waits(), 0u) << "four threads never found the arena's lock held in 20 s";
  const std::uint64_t later_pairs = pairs.load() - pairs_at_switch;
  const std::uint64_t later_arena_calls = raw->stats().allocations - arena_calls_at_switch;
  EXPECT_GT(later_pairs, 100000u);
  EXPECT_LT(later_arena_calls * 2, later_pairs) << "the threads kept taking the arena's lock";
  cache.release_cached();
}

}  // namespace
}  // namespace gpushim
