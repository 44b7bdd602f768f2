// What is special about the per-thread caches (allocators/thread_cache_allocator.h); what every backend
// must do, they pass in tests/allocator_conformance_test.cpp ("<backend>_thread_cached").
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "allocators/thread_cache_allocator.h"
#include "allocators/vmm_arena.h"
#include "providers/host_provider.h"

namespace gpushim {
namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;

class ThreadCacheTest : public ::testing::Test {
 protected:
  ThreadCacheTest() {
    VmmArenaOptions o;
    o.reserve = 512 * MiB;
    o.grow_step = 2 * MiB;
    o.release_threshold = 0;  // release_cached() must show every block back in the arena
    cache_ = std::make_unique<ThreadCacheAllocator>(std::make_unique<VmmArena>(provider_, o));
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

// The out-of-memory path: release_cached() on one thread gets back what other, idle threads cache.
TEST_F(ThreadCacheTest, ReleaseCachedFromAnotherThreadEmptiesEveryThreadsCache) {
  constexpr int kThreads = 4;
  std::atomic<int> parked{0};
  std::atomic<bool> released{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<void*> blocks;
      for (int i = 0; i < 8; ++i) blocks.push_back(cache_->allocate(KiB * (t + 1), 0));
      for (void* p : blocks) cache_->deallocate(p, KiB * (t + 1), 0);
      parked.fetch_add(1);
      while (!released.load()) std::this_thread::yield();  // alive, cache full, no call of its own
    });
  }
  while (parked.load() < kThreads) std::this_thread::yield();
  EXPECT_EQ(cache_->cached_blocks(), std::size_t{8 * kThreads});
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
// cache: no block is handed out twice (each carries its owner's pattern), and the counts add up.
TEST_F(ThreadCacheTest, ManyThreadsAndCrossThreadFreesWithConcurrentReleases) {
  constexpr int kThreads = 8;
  constexpr int kRounds = 3000;
  struct Block {
    void* p;
    std::size_t bytes;
    unsigned char tag;
  };
  std::vector<std::vector<Block>> handoff(kThreads);
  std::vector<std::mutex> handoff_locks(kThreads);
  std::atomic<int> corrupted{0}, failures{0};
  std::atomic<bool> done{false};
  auto verify = [&](const Block& b) {
    const auto* bytes = static_cast<const unsigned char*>(b.p);
    if (bytes[0] != b.tag || bytes[b.bytes - 1] != b.tag) corrupted.fetch_add(1);
  };
  std::thread releaser([&] {
    while (!done.load()) {
      cache_->release_cached();
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Block> live;
      unsigned seed = 7u + static_cast<unsigned>(t);
      for (int i = 0; i < kRounds; ++i) {
        seed = seed * 1103515245u + 12345u;
        const std::size_t bytes = 1 + (seed >> 8) % (96 * KiB);
        void* p = cache_->allocate(bytes, 0);
        if (!p) {
          failures.fetch_add(1);
          continue;
        }
        const auto tag = static_cast<unsigned char>(t * 31 + i);
        std::memset(p, tag, bytes);
        live.push_back({p, bytes, tag});
        if (live.size() > 16) {
          Block b = live[seed % live.size()];
          live.erase(std::find_if(live.begin(), live.end(), [&](const Block& x) { return x.p == b.p; }));
          if (seed & 1) {  // freed here
            verify(b);
            cache_->deallocate(b.p, b.bytes, 0);
          } else {  // freed by the next thread
            std::lock_guard<std::mutex> guard(handoff_locks[(t + 1) % kThreads]);
            handoff[(t + 1) % kThreads].push_back(b);
          }
        }
        std::vector<Block> mine;
        {
          std::lock_guard<std::mutex> guard(handoff_locks[t]);
          mine.swap(handoff[t]);
        }
        for (const Block& b : mine) {
          verify(b);
          cache_->deallocate(b.p, b.bytes, 0);
        }
      }
      for (const Block& b : live) {
        verify(b);
        cache_->deallocate(b.p, b.bytes, 0);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  done.store(true);
  releaser.join();
  for (int t = 0; t < kThreads; ++t)
    for (const Block& b : handoff[t]) {
      verify(b);
      cache_->deallocate(b.p, b.bytes, 0);
    }
  EXPECT_EQ(corrupted.load(), 0) << "a block was handed to two owners";
  EXPECT_EQ(failures.load(), 0);
  const AllocatorStats s = cache_->stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.internal_waste, 0u);
  EXPECT_EQ(s.allocations, s.deallocations);
  EXPECT_EQ(s.allocations, static_cast<std::uint64_t>(kThreads) * kRounds);
  cache_->release_cached();
  EXPECT_EQ(provider_.bytes_mapped(), 0u);
}

}  // namespace
}  // namespace gpushim
