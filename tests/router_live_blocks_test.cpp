// The live blocks with a front per thread (router/live_blocks.h): a thread's own blocks stay out of the
// shared table, and every other free (another thread's block, a block of an exited thread, a double free,
// a stranger) is still answered as the shared table alone answered it.
#include "router/live_blocks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace gpushim {
namespace {

using Result = LiveBlocks::EraseResult;

LiveBlock block_of(std::size_t requested, int device = 0) { return LiveBlock{requested, requested, device, false}; }

// Runs `first` on a new thread, then holds the thread alive until release() (its front stays its own).
class HeldThread {
 public:
  template <typename First>
  explicit HeldThread(First first) {
    thread_ = std::thread([this, first] {
      first();
      std::unique_lock<std::mutex> lock(mutex_);
      ready_ = true;
      changed_.notify_all();
      changed_.wait(lock, [this] { return released_; });
    });
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return ready_; });
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      released_ = true;
      changed_.notify_all();
    }
    thread_.join();
  }
  ~HeldThread() {
    if (thread_.joinable()) release();
  }

 private:
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool ready_ = false;
  bool released_ = false;
};

TEST(LiveBlocks, AThreadsOwnBlocksNeverReachTheSharedTable) {
  LiveBlocks table;
  LiveBlock block;
  for (std::uintptr_t i = 0; i < 10000; ++i) {
    const std::uintptr_t p = 0x7f0000000000 + 256 * (i % 700);
    table.insert(p, block_of(i + 1));
    ASSERT_EQ(table.erase(p, &block), Result::erased);
    ASSERT_EQ(block.requested, i + 1);
  }
  EXPECT_EQ(table.shared().slot_capacity(), 0u);
  EXPECT_EQ(table.fronts(), 1u);
}

TEST(LiveBlocks, ABlockFreedByAnotherThreadIsFreedOnce) {
  LiveBlocks table;
  const std::uintptr_t p = 0x10000;
  HeldThread owner([&] { table.insert(p, block_of(100, 3)); });
  LiveBlock block;
  ASSERT_TRUE(table.find(p, &block));
  EXPECT_EQ(block.device, 3);
  ASSERT_EQ(table.erase(p, &block), Result::erased);
  EXPECT_EQ(block.requested, 100u);
  EXPECT_FALSE(table.find(p, &block));
  EXPECT_EQ(table.erase(p, &block), Result::double_free);
  EXPECT_EQ(block.device, 3);
}

TEST(LiveBlocks, AnotherThreadsBlocksAreFoundThroughTheirOwnersHint) {
  // A block passed between threads is found in its owner's front without searching every front (16
  // threads freeing each other's blocks through searches moved 14 times fewer pairs), once one such
  // block was found by a search.
  LiveBlocks table;
  constexpr std::uintptr_t kBase = 0x7f0000000000;
  constexpr int kBlocks = 200;
  HeldThread bystander([&] { table.insert(0x1000, block_of(1)); });  // a second front to search
  LiveBlock block;
  HeldThread first([&] { table.insert(0x2000, block_of(7)); });
  ASSERT_EQ(table.erase(0x2000, &block), Result::erased);  // no hint yet: a search, which turns them on
  ASSERT_EQ(block.requested, 7u);
  EXPECT_EQ(table.searches(), 1u);
  EXPECT_TRUE(table.hints_wanted());
  HeldThread owner([&] {
    for (int i = 0; i < kBlocks; ++i) table.insert(kBase + 4096 * std::uintptr_t(i), block_of(i + 1));
  });
  for (int i = 0; i < kBlocks; ++i) {
    ASSERT_TRUE(table.find(kBase + 4096 * std::uintptr_t(i), &block));
    ASSERT_EQ(table.erase(kBase + 4096 * std::uintptr_t(i), &block), Result::erased);
    ASSERT_EQ(block.requested, std::size_t(i + 1));
  }
  EXPECT_EQ(table.searches(), 1u);
  // Strangers and double frees still search, and are answered as before.
  EXPECT_EQ(table.erase(kBase + 4096 * (kBlocks - 1), &block), Result::double_free);  // the latest free
  EXPECT_EQ(table.erase(0x30000, &block), Result::unknown);
  EXPECT_GT(table.searches(), 0u);
}

TEST(LiveBlocks, ThreadsThatFreeOnlyTheirOwnBlocksNoteNoOwners) {
  // No hint is read or written until another thread's block is freed: a thread's own frees never ask.
  LiveBlocks table;
  LiveBlock block;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&table, t] {
      LiveBlock mine;
      for (int i = 0; i < 1000; ++i) {
        const std::uintptr_t p = 0x7f0000000000 + (std::uintptr_t(t) << 32) + 256 * std::uintptr_t(i);
        table.insert(p, block_of(i + 1));
        if (table.erase(p, &mine) != Result::erased) ADD_FAILURE() << "thread " << t << " block " << i;
      }
    });
  for (std::thread& thread : threads) thread.join();
  EXPECT_FALSE(table.hints_wanted());
  EXPECT_EQ(table.searches(), 0u);
  // A search that finds nothing live (here a block of a thread that exited) turns nothing on.
  EXPECT_EQ(table.erase(0x7f0000000000, &block), Result::unknown);
  EXPECT_FALSE(table.hints_wanted());
  // A block found through a search of the fronts turns the hints on (find, as a free does).
  HeldThread owner([&] { table.insert(0x9000, block_of(9)); });
  ASSERT_TRUE(table.find(0x9000, &block));
  EXPECT_TRUE(table.hints_wanted());
}

TEST(LiveBlocks, TheOwnersSecondFreeAfterAnotherThreadsFreeIsADoubleFree) {
  LiveBlocks table;
  const std::uintptr_t p = 0x20000;
  std::atomic<int> step{0};
  Result second = Result::erased;
  std::thread owner([&] {
    table.insert(p, block_of(7));
    step.store(1);
    while (step.load() != 2) std::this_thread::yield();
    LiveBlock block;
    second = table.erase(p, &block);  // its own front holds the slot, freed by the other thread
  });
  while (step.load() != 1) std::this_thread::yield();
  LiveBlock block;
  ASSERT_EQ(table.erase(p, &block), Result::erased);
  step.store(2);
  owner.join();
  EXPECT_EQ(second, Result::double_free);
}

TEST(LiveBlocks, AnAddressFreedHereAndLiveInAnotherThreadIsNotADoubleFree) {
  // This thread's front keeps a freed marker for p; p is then handed out to another thread, and this
  // thread frees it (a block passed between threads): live there wins over the marker here.
  LiveBlocks table;
  const std::uintptr_t p = 0x40000;
  LiveBlock block;
  table.insert(p, block_of(1));
  ASSERT_EQ(table.erase(p, &block), Result::erased);
  HeldThread other([&] { table.insert(p, block_of(2)); });
  ASSERT_EQ(table.erase(p, &block), Result::erased);
  EXPECT_EQ(block.requested, 2u);
  EXPECT_EQ(table.erase(p, &block), Result::double_free);
}

TEST(LiveBlocks, AnExitedThreadsLiveBlocksMoveToTheSharedTable) {
  LiveBlocks table;
  std::thread([&] {
    for (std::uintptr_t i = 1; i <= 10; ++i) table.insert(i << 20, block_of(i * 1000, 1));
  }).join();
  std::uint64_t bytes = 0, count = 0;
  table.totals(1, &bytes, &count);
  EXPECT_EQ(count, 10u);
  EXPECT_EQ(bytes, 55000u);
  EXPECT_GT(table.shared().slot_capacity(), 0u);
  LiveBlock block;
  for (std::uintptr_t i = 1; i <= 10; ++i) {
    ASSERT_TRUE(table.find(i << 20, &block));
    ASSERT_EQ(table.erase(i << 20, &block), Result::erased);
    EXPECT_EQ(block.requested, i * 1000);
  }
  // The exited thread's front went to the next thread that needed one: this one.
  EXPECT_EQ(table.fronts(), 1u);
}

TEST(LiveBlocks, MoreLiveBlocksThanFrontSlotsAreAllKept) {
  LiveBlocks table;
  const std::size_t n = 10 * LiveBlocks::kFrontSlots;
  for (std::size_t i = 0; i < n; ++i) table.insert(0x7f0000000000 + 4096 * i, block_of(i + 1));
  std::uint64_t bytes = 0, count = 0;
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, n);
  LiveBlock block;
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(table.erase(0x7f0000000000 + 4096 * i, &block), Result::erased) << i;
    ASSERT_EQ(block.requested, i + 1);
  }
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, 0u);
}

// A thread's working set stays in its own front: 64 live blocks of mixed sizes, as an arena places them
// (256-byte aligned, one after another), nearly all in their slots; few reach the shared table, whose
// shard locks every thread writes (kFrontSlots says what 256 slots cost).
TEST(LiveBlocks, SixtyFourLiveBlocksOfMixedSizesStayMostlyInTheFront) {
  LiveBlocks table;
  std::vector<std::uintptr_t> live;
  std::uintptr_t next = 0x7f0000000000;
  std::uint64_t seed = 12345;
  for (int i = 0; i < 64; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    live.push_back(next);
    table.insert(next, block_of(i + 1));
    next += (1 + (seed >> 33) % 65536) * 256;  // 256 B to 16 MiB apart
  }
  std::uint64_t bytes = 0, in_shared = 0;
  table.shared().totals(0, &bytes, &in_shared);
  EXPECT_LE(in_shared, 4u);  // 3 with 1024 slots; 256 slots put 6 of these there
  LiveBlock block;
  for (const std::uintptr_t p : live) ASSERT_EQ(table.erase(p, &block), Result::erased);
}

TEST(LiveBlocks, RecentlyFreedIsBoundedPerFront) {
  // As the shared table's shards: a free long after the first goes to the driver (a stranger's answer).
  LiveBlocks table;
  LiveBlock block;
  const std::uintptr_t first = 0x1000000;
  table.insert(first, block_of(1));
  ASSERT_EQ(table.erase(first, &block), Result::erased);
  std::uint32_t erases = 0;
  for (std::uintptr_t p = first + 256; erases < LiveBlocks::kRecentlyFreedPerFront - 1; p += 256) {
    if (LiveBlocks::front_slot(p) == LiveBlocks::front_slot(first)) continue;  // would take its slot
    table.insert(p, block_of(1));
    ASSERT_EQ(table.erase(p, &block), Result::erased);
    ++erases;
  }
  EXPECT_EQ(table.erase(first, &block), Result::double_free);  // still among the last 64
  for (std::uintptr_t p = first + 0x100000;; p += 256) {
    if (LiveBlocks::front_slot(p) == LiveBlocks::front_slot(first)) continue;
    table.insert(p, block_of(1));
    ASSERT_EQ(table.erase(p, &block), Result::erased);
    break;
  }
  EXPECT_EQ(table.erase(first, &block), Result::unknown);
  EXPECT_EQ(table.erase(0x30000, &block), Result::unknown);
  EXPECT_EQ(table.erase(0, &block), Result::unknown);
}

TEST(LiveBlocks, TheDumpAndTheReportSeeEveryThreadsBlocks) {
  LiveBlocks table;
  table.insert(0x100000, block_of(1000));  // this thread's front
  HeldThread other([&] { table.insert(0x200000, block_of(5000)); });
  std::thread([&] { table.insert(0x300000, block_of(3000)); }).join();  // the shared table
  std::set<std::uintptr_t> seen;
  LiveBlocks::Entry batch[2];
  for (std::size_t part = 0; part < LiveBlocks::kParts; ++part)
    for (std::size_t from = 0; from != ~std::size_t{0};) {
      const std::size_t copied = table.copy_live(part, from, batch, 2, &from);
      for (std::size_t i = 0; i < copied; ++i) EXPECT_TRUE(seen.insert(batch[i].address).second);
    }
  EXPECT_EQ(seen, (std::set<std::uintptr_t>{0x100000, 0x200000, 0x300000}));
  const auto top = table.largest(0, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].address, 0x200000u);
  EXPECT_EQ(top[1].address, 0x300000u);
  std::uintptr_t base = 0;
  LiveBlock block;
  ASSERT_TRUE(table.find_containing(0x200000 + 4999, &base, &block));
  EXPECT_EQ(base, 0x200000u);
  EXPECT_FALSE(table.find_containing(0x200000 + 5000, &base, &block));
  ASSERT_TRUE(table.find_containing(0x100000 + 10, &base, &block));
  EXPECT_EQ(base, 0x100000u);
}

TEST(LiveBlocks, AfterForkTheParentsBlocksAreStrangers) {
  LiveBlocks table;
  LiveBlock block;
  for (std::uintptr_t i = 1; i <= 100; ++i) table.insert(i << 12, block_of(256));
  HeldThread other([&] { table.insert(0x900000, block_of(256)); });
  ASSERT_EQ(table.erase(1 << 12, &block), Result::erased);
  table.reset_after_fork();
  EXPECT_EQ(table.erase(2 << 12, &block), Result::unknown);
  EXPECT_EQ(table.erase(1 << 12, &block), Result::unknown);
  EXPECT_EQ(table.erase(0x900000, &block), Result::unknown);
  std::uint64_t bytes = 1, count = 1;
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, 0u);
  table.insert(3 << 12, block_of(512));
  EXPECT_EQ(table.erase(3 << 12, &block), Result::erased);
  EXPECT_EQ(block.requested, 512u);
}

TEST(LiveBlocks, ThreadsPastTheFrontLimitUseTheSharedTable) {
  LiveBlocks table;
  const std::size_t threads = LiveBlocks::kMaxFronts + 4;
  std::vector<std::unique_ptr<HeldThread>> held;
  for (std::size_t t = 0; t < threads; ++t)
    held.push_back(std::make_unique<HeldThread>([&table, t] { table.insert(0x10000000 + (t << 12), block_of(t + 1)); }));
  EXPECT_EQ(table.fronts(), LiveBlocks::kMaxFronts);
  std::uint64_t bytes = 0, count = 0;
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, threads);
  LiveBlock block;
  for (std::size_t t = 0; t < threads; ++t) {
    ASSERT_EQ(table.erase(0x10000000 + (t << 12), &block), Result::erased) << t;
    EXPECT_EQ(block.requested, t + 1);
  }
}

TEST(LiveBlocks, AThreadMovesBetweenTables) {
  // The tests' case: one thread, one table after another; a table destroyed before the thread exits.
  auto first = std::make_unique<LiveBlocks>();
  LiveBlocks second;
  LiveBlock block;
  first->insert(0x1000, block_of(1));
  second.insert(0x2000, block_of(2));
  ASSERT_EQ(first->erase(0x1000, &block), Result::erased);
  ASSERT_EQ(second.erase(0x2000, &block), Result::erased);
  EXPECT_EQ(block.requested, 2u);
  std::thread([&] {
    first->insert(0x3000, block_of(3));
    first.reset();  // destroyed while this thread still holds a front of it: its exit leaves it alone
  }).join();
}

// Threads allocate, free their own blocks, free blocks other threads allocated, and exit while others
// search: every block is freed exactly once, and none is lost.
TEST(LiveBlocks, ThreadsThatFreeEachOthersBlocksAndExitLoseNone) {
  LiveBlocks table;
  constexpr int kGenerations = 6;
  constexpr int kThreads = 8;
  constexpr int kBlocks = 4000;
  std::mutex handed_lock;
  std::vector<std::uintptr_t> handed;  // blocks allocated by one thread, to be freed by another
  std::atomic<int> errors{0};
  std::atomic<std::uint64_t> next{1};
  for (int generation = 0; generation < kGenerations; ++generation) {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        LiveBlock block;
        for (int i = 0; i < kBlocks; ++i) {
          const std::uintptr_t p = next.fetch_add(1) << 8;
          table.insert(p, block_of(p));
          if (i % 3 == 0) {
            std::lock_guard<std::mutex> guard(handed_lock);
            handed.push_back(p);
            continue;
          }
          if (table.erase(p, &block) != Result::erased || block.requested != p) errors++;
          std::uintptr_t theirs = 0;
          {
            std::lock_guard<std::mutex> guard(handed_lock);
            if (!handed.empty() && i % 2 == 0) {
              theirs = handed.back();
              handed.pop_back();
            }
          }
          if (theirs && (table.erase(theirs, &block) != Result::erased || block.requested != theirs)) errors++;
        }
      });
    }
    for (auto& thread : threads) thread.join();
  }
  EXPECT_EQ(errors.load(), 0);
  std::uint64_t bytes = 0, count = 0;
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, handed.size());  // the blocks still handed over are live, in the shared table now
  LiveBlock block;
  for (std::uintptr_t p : handed) ASSERT_EQ(table.erase(p, &block), Result::erased);
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, 0u);
  EXPECT_LE(table.fronts(), static_cast<std::size_t>(kThreads));
}

}  // namespace
}  // namespace gpushim
