// What the out-of-memory dump reads from the router, on the CPU: the interned stacks of live blocks
// (router/allocation_stacks.h) and the live-block table walked a batch at a time (copy_live).
#include <gtest/gtest.h>

#include <set>
#include <thread>
#include <vector>

#include "router/allocation_stacks.h"
#include "router/live_block_table.h"

namespace gpushim {
namespace {

TEST(StackStore, SameStackSameIdDifferentStackDifferentId) {
  StackStore store;
  ASSERT_TRUE(store.init(4));
  const std::uint64_t a[] = {0x1000, 0x2000, 0x3000};
  const std::uint64_t b[] = {0x1000, 0x2000, 0x3001};
  const std::uint32_t id_a = store.intern(a, 3);
  const std::uint32_t id_b = store.intern(b, 3);
  EXPECT_NE(id_a, 0u);
  EXPECT_NE(id_b, 0u);
  EXPECT_NE(id_a, id_b);
  EXPECT_EQ(store.intern(a, 3), id_a);
  EXPECT_NE(store.intern(a, 2), id_a) << "a shorter stack is another stack";
  const std::uint64_t* frames = nullptr;
  ASSERT_EQ(store.frames_of(id_b, &frames), 3);
  EXPECT_EQ(frames[2], 0x3001u);
}

TEST(StackStore, DeeperStacksAreCutToTheDepth) {
  StackStore store;
  ASSERT_TRUE(store.init(2));
  const std::uint64_t deep[] = {1, 2, 3, 4};
  const std::uint32_t id = store.intern(deep, 4);
  const std::uint64_t* frames = nullptr;
  EXPECT_EQ(store.frames_of(id, &frames), 2);
}

TEST(StackStore, OffOrEmptyGivesNoId) {
  StackStore off;
  const std::uint64_t one[] = {1};
  EXPECT_EQ(off.intern(one, 1), 0u);
  const std::uint64_t* frames = nullptr;
  EXPECT_EQ(off.frames_of(1, &frames), 0);
  StackStore on;
  ASSERT_TRUE(on.init(4));
  EXPECT_EQ(on.intern(one, 0), 0u);
  EXPECT_EQ(on.frames_of(0, &frames), 0);
  EXPECT_EQ(on.frames_of(StackStore::kCapacity + 1, &frames), 0);
}

TEST(StackStore, AFullStoreGivesIdZeroAndKeepsWhatItHas) {
  StackStore store;
  ASSERT_TRUE(store.init(1));
  std::uint32_t stored = 0, refused = 0;
  for (std::uint64_t i = 1; i <= StackStore::kCapacity + 5000; ++i) {
    const std::uint64_t frame = i * 0x40;
    (store.intern(&frame, 1) ? stored : refused)++;
  }
  EXPECT_GT(refused, 0u);
  EXPECT_LE(stored, StackStore::kCapacity);
  EXPECT_GT(stored, StackStore::kCapacity / 2) << "probing should fill most of the store";
  const std::uint64_t first = 0x40;
  EXPECT_NE(store.intern(&first, 1), 0u) << "an early stack is still found";
}

TEST(StackStore, ThreadsInterningTheSameStacksAgree) {
  StackStore store;
  ASSERT_TRUE(store.init(8));
  std::vector<std::vector<std::uint32_t>> ids(4, std::vector<std::uint32_t>(200));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < 200; ++i) {
        const std::uint64_t frames[] = {i, i + 1, i + 2};
        ids[t][i] = store.intern(frames, 3);
      }
    });
  for (auto& t : threads) t.join();
  for (std::uint64_t i = 0; i < 200; ++i) {
    const std::uint64_t* frames = nullptr;
    for (int t = 0; t < 4; ++t) {
      ASSERT_NE(ids[t][i], 0u);
      // Two threads racing on one new stack may each store it; both ids must hold that stack.
      ASSERT_EQ(store.frames_of(ids[t][i], &frames), 3);
      EXPECT_EQ(frames[0], i);
      EXPECT_EQ(frames[2], i + 2);
    }
  }
}

TEST(LiveBlockTableCopy, SmallBatchesVisitEveryLiveBlockOnce) {
  LiveBlockTable table;
  std::set<std::uintptr_t> live;
  for (std::uintptr_t i = 1; i <= 3000; ++i) {
    const std::uintptr_t p = i * 0x1000;
    LiveBlock block{i, 4096, 0, false};
    block.stream = i % 3;
    block.time_ns = i;
    block.stack = std::uint32_t(i % 7);
    table.insert(p, block);
    live.insert(p);
  }
  for (std::uintptr_t i = 1; i <= 3000; i += 3) {
    LiveBlock out;
    table.erase(i * 0x1000, &out);
    live.erase(i * 0x1000);
  }
  std::multiset<std::uintptr_t> seen;
  LiveBlockTable::Entry batch[7];
  for (std::size_t shard = 0; shard < LiveBlockTable::kShards; ++shard)
    for (std::size_t from = 0; from != ~std::size_t{0};) {
      const std::size_t n = table.copy_live(shard, from, batch, 7, &from);
      ASSERT_LE(n, 7u);
      for (std::size_t i = 0; i < n; ++i) {
        seen.insert(batch[i].address);
        const std::uintptr_t index = batch[i].address / 0x1000;
        EXPECT_EQ(batch[i].block.requested, index);
        EXPECT_EQ(batch[i].block.stream, index % 3);
        EXPECT_EQ(batch[i].block.time_ns, index);
        EXPECT_EQ(batch[i].block.stack, index % 7);
      }
    }
  EXPECT_EQ(seen.size(), live.size());
  EXPECT_EQ(std::set<std::uintptr_t>(seen.begin(), seen.end()), live);
  std::size_t next = 0;
  EXPECT_EQ(table.copy_live(LiveBlockTable::kShards, 0, batch, 7, &next), 0u);
  EXPECT_EQ(next, ~std::size_t{0});
}

}  // namespace
}  // namespace gpushim
