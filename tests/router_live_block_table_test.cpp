#include "router/live_block_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

namespace gpushim {
namespace {

TEST(LiveBlockTable, InsertFindErase) {
  LiveBlockTable table;
  table.insert(0x10000, LiveBlock{100, 256, 0, false});
  LiveBlock block;
  ASSERT_TRUE(table.find(0x10000, &block));
  EXPECT_EQ(block.requested, 100u);
  EXPECT_EQ(block.block_size, 256u);
  EXPECT_EQ(table.erase(0x10000, &block), LiveBlockTable::EraseResult::erased);
  EXPECT_FALSE(table.find(0x10000, &block));
}

// A forked child owns none of the parent's blocks: after the fork handler, they and the parent's recent
// frees are strangers, and the table serves the child's own blocks as before.
TEST(LiveBlockTable, AfterForkTheParentsBlocksAreStrangers) {
  LiveBlockTable table;
  for (std::uintptr_t i = 1; i <= 100; ++i) table.insert(i << 12, LiveBlock{256, 256, 0, false});
  LiveBlock block;
  ASSERT_EQ(table.erase(1 << 12, &block), LiveBlockTable::EraseResult::erased);
  table.reset_after_fork();
  EXPECT_EQ(table.erase(2 << 12, &block), LiveBlockTable::EraseResult::unknown);
  EXPECT_EQ(table.erase(1 << 12, &block), LiveBlockTable::EraseResult::unknown);
  std::uint64_t bytes = 1, count = 1;
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, 0u);
  EXPECT_EQ(bytes, 0u);
  table.insert(3 << 12, LiveBlock{512, 512, 0, false});
  EXPECT_EQ(table.erase(3 << 12, &block), LiveBlockTable::EraseResult::erased);
  EXPECT_EQ(block.requested, 512u);
}

TEST(LiveBlockTable, SecondFreeIsOurDoubleFree) {
  LiveBlockTable table;
  table.insert(0x20000, LiveBlock{512, 512, 1, true});
  LiveBlock block;
  ASSERT_EQ(table.erase(0x20000, &block), LiveBlockTable::EraseResult::erased);
  ASSERT_EQ(table.erase(0x20000, &block), LiveBlockTable::EraseResult::double_free);
  EXPECT_EQ(block.device, 1);
  EXPECT_TRUE(block.async_origin);
  // And a third time: still recognised, never "unknown".
  EXPECT_EQ(table.erase(0x20000, &block), LiveBlockTable::EraseResult::double_free);
}

TEST(LiveBlockTable, StrangersAreUnknown) {
  LiveBlockTable table;
  LiveBlock block;
  EXPECT_EQ(table.erase(0x30000, &block), LiveBlockTable::EraseResult::unknown);
  EXPECT_EQ(table.erase(0, &block), LiveBlockTable::EraseResult::unknown);
}

TEST(LiveBlockTable, ReusedAddressIsLiveAgainNotADoubleFree) {
  LiveBlockTable table;
  LiveBlock block;
  table.insert(0x40000, LiveBlock{1, 256, 0, false});
  ASSERT_EQ(table.erase(0x40000, &block), LiveBlockTable::EraseResult::erased);
  table.insert(0x40000, LiveBlock{2, 256, 0, false});
  ASSERT_EQ(table.erase(0x40000, &block), LiveBlockTable::EraseResult::erased);
  EXPECT_EQ(block.requested, 2u);
}

TEST(LiveBlockTable, RecentlyFreedIsBounded) {
  // A double free long after the first free falls out of memory and goes to the driver (which answers
  // it with its own error): the table never grows with frees.
  LiveBlockTable table;
  LiveBlock block;
  const std::uintptr_t first = 0x1000000;
  table.insert(first, LiveBlock{1, 256, 0, false});
  table.erase(first, &block);
  const std::size_t shard = LiveBlockTable::shard_of(first);
  std::size_t pushed = 0;
  for (std::uintptr_t p = first + 256; pushed <= LiveBlockTable::kRecentlyFreedPerShard; p += 256) {
    if (LiveBlockTable::shard_of(p) != shard) continue;
    table.insert(p, LiveBlock{1, 256, 0, false});
    table.erase(p, &block);
    ++pushed;
  }
  EXPECT_EQ(table.erase(first, &block), LiveBlockTable::EraseResult::unknown);
}

TEST(LiveBlockTable, FreesOfEverNewAddressesDoNotGrowTheTable) {
  // Freed slots stay as double-free markers until they are stale; a rebuild drops stale ones. A program
  // that frees every block it allocates, at addresses never seen before, must not grow the table.
  LiveBlockTable table;
  LiveBlock block;
  std::uintptr_t p = 0x7f0000000000;
  for (int i = 0; i < 200000; ++i, p += 256) {
    table.insert(p, LiveBlock{1, 256, 0, false});
    ASSERT_EQ(table.erase(p, &block), LiveBlockTable::EraseResult::erased);
  }
  const std::size_t bounded = table.slot_capacity();
  for (int i = 0; i < 400000; ++i, p += 256) {
    table.insert(p, LiveBlock{1, 256, 0, false});
    ASSERT_EQ(table.erase(p, &block), LiveBlockTable::EraseResult::erased);
  }
  EXPECT_EQ(table.slot_capacity(), bounded);
  // 64 shards x (32 remembered + 1) x 4, rounded up to a power of two per shard.
  EXPECT_LE(bounded, LiveBlockTable::kShards * 256);
  // The latest free of each shard is still remembered.
  EXPECT_EQ(table.erase(p - 256, &block), LiveBlockTable::EraseResult::double_free);
}

TEST(LiveBlockTable, AWorkingSetThatCyclesStopsRebuilding) {
  // With every free fenced, each thread cycles a few hundred blocks of its own: the same addresses come
  // back again and again, each freed long before it is handed out again. Their freed slots must stay, so
  // that each insert finds its own slot, rather than each insert appending and a rebuild following every
  // quarter of a shard's slots (16 threads at 256 B on the H200: 13% of all samples).
  LiveBlockTable table;
  LiveBlock block;
  constexpr std::uintptr_t kBase = 0x7f0000000000;
  constexpr int kAddresses = 16000;  // 16 threads x 1000 blocks: 250 a shard
  auto cycle = [&] {
    for (int i = 0; i < kAddresses; ++i) {
      const std::uintptr_t p = kBase + 512 * static_cast<std::uintptr_t>(i);
      table.insert(p, LiveBlock{1, 512, 0, false});
      ASSERT_EQ(table.erase(p, &block), LiveBlockTable::EraseResult::erased);
    }
  };
  for (int round = 0; round < 4; ++round) cycle();  // the shards learn that their addresses come back
  const std::uint64_t rebuilds = table.rebuilds();
  const std::size_t capacity = table.slot_capacity();
  for (int round = 0; round < 20; ++round) cycle();
  EXPECT_EQ(table.rebuilds(), rebuilds);
  EXPECT_EQ(table.slot_capacity(), capacity);
  EXPECT_LE(capacity, LiveBlockTable::kShards * LiveBlockTable::kMaxSlotsKeepingFreed);
  // Double frees are still recognised, strangers still unknown.
  const std::uintptr_t last = kBase + 512 * static_cast<std::uintptr_t>(kAddresses - 1);
  EXPECT_EQ(table.erase(last, &block), LiveBlockTable::EraseResult::double_free);
  EXPECT_EQ(table.erase(kBase - 512, &block), LiveBlockTable::EraseResult::unknown);
}

TEST(LiveBlockTable, ACycleLargerThanTheBoundStaysBounded) {
  // More addresses than the shards may keep: the stale slots are dropped again, as for new addresses.
  LiveBlockTable table;
  LiveBlock block;
  constexpr std::uintptr_t kBase = 0x7f0000000000;
  const int addresses = static_cast<int>(LiveBlockTable::kShards * LiveBlockTable::kMaxSlotsKeepingFreed);
  for (int round = 0; round < 3; ++round)
    for (int i = 0; i < addresses; ++i) {
      const std::uintptr_t p = kBase + 512 * static_cast<std::uintptr_t>(i);
      table.insert(p, LiveBlock{1, 512, 0, false});
      ASSERT_EQ(table.erase(p, &block), LiveBlockTable::EraseResult::erased);
    }
  EXPECT_LE(table.slot_capacity(), LiveBlockTable::kShards * LiveBlockTable::kMaxSlotsKeepingFreed);
}

TEST(LiveBlockTable, ShardsSpreadNeighbouringBlocks) {
  std::set<std::size_t> used;
  for (std::uintptr_t p = 0x7f0000000000; p < 0x7f0000000000 + 256 * 256; p += 256)
    used.insert(LiveBlockTable::shard_of(p));
  EXPECT_EQ(used.size(), LiveBlockTable::kShards);
}

TEST(LiveBlockTable, FindContainingFindsInteriorPointers) {
  LiveBlockTable table;
  table.insert(0x100000, LiveBlock{1000, 1024, 0, false});
  table.insert(0x200000, LiveBlock{50, 256, 0, false});
  std::uintptr_t base = 0;
  LiveBlock block;
  ASSERT_TRUE(table.find_containing(0x100000 + 999, &base, &block));
  EXPECT_EQ(base, 0x100000u);
  EXPECT_FALSE(table.find_containing(0x100000 + 1000, &base, &block));  // past the requested size
  ASSERT_TRUE(table.find_containing(0x200000 + 10, &base, &block));
  EXPECT_EQ(base, 0x200000u);
  EXPECT_FALSE(table.find_containing(0x50, &base, &block));
}

TEST(LiveBlockTable, LargestAndTotalsPerDevice) {
  LiveBlockTable table;
  for (std::uintptr_t i = 1; i <= 30; ++i) table.insert(i << 20, LiveBlock{i * 1000, i * 1024, 0, false});
  table.insert(999u << 20, LiveBlock{1u << 30, 1u << 30, 1, false});  // other device
  auto top = table.largest(0, 10);
  ASSERT_EQ(top.size(), 10u);
  for (std::size_t i = 0; i < top.size(); ++i) EXPECT_EQ(top[i].block.requested, (30 - i) * 1000);
  std::uint64_t bytes = 0, count = 0;
  table.totals(0, &bytes, &count);
  EXPECT_EQ(count, 30u);
  EXPECT_EQ(bytes, 1000u * 30 * 31 / 2);
}

TEST(LiveBlockTable, ManyThreadsEachSeeOnlyTheirOwnBlocks) {
  LiveBlockTable table;
  constexpr int kThreads = 8;
  constexpr int kRounds = 20000;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      LiveBlock block;
      for (int i = 0; i < kRounds; ++i) {
        std::uintptr_t p = (std::uintptr_t(t + 1) << 40) + std::uintptr_t(i % 512) * 256;
        table.insert(p, LiveBlock{std::size_t(i), 256, t, false});
        if (!table.find(p, &block) || block.device != t) errors++;
        if (table.erase(p, &block) != LiveBlockTable::EraseResult::erased) errors++;
        // Usually recognised as ours; under heavy traffic in one shard the bounded memory of recent
        // frees may have moved on (then the driver answers it). Never may it free a block twice.
        if (table.erase(p, &block) == LiveBlockTable::EraseResult::erased) errors++;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    std::uint64_t bytes = 1, count = 1;
    table.totals(t, &bytes, &count);
    EXPECT_EQ(count, 0u);
  }
}

}  // namespace
}  // namespace gpushim
