// LiveBlockTable (open addressing, backward-shift deletion, a ring of recent erases per shard) against a
// simple reference model, over long random sequences that keep probe runs crowded: few distinct
// addresses, so slots are reused, freed slots are forgotten and runs wrap around the end of a shard.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "router/live_block_table.h"

namespace gpushim {
namespace {

TEST(LiveBlockTableModel, RandomSequencesAgreeWithAReferenceMap) {
  for (unsigned seed = 1; seed <= 4; ++seed) {
    LiveBlockTable table;
    std::map<std::uintptr_t, LiveBlock> live;
    std::mt19937_64 random(seed);
    const std::size_t distinct = seed % 2 ? 3000 : 200000;
    for (int step = 0; step < 300000; ++step) {
      const std::uintptr_t p = 0x7f0000000000 + (random() % distinct) * 256;
      LiveBlock block;
      if (random() % 2) {
        if (live.count(p)) continue;  // the router never inserts a live address
        const LiveBlock fresh{static_cast<std::size_t>(step % 4096 + 1), 4096, static_cast<int>(step % 3), false};
        table.insert(p, fresh);
        live[p] = fresh;
      } else {
        const LiveBlockTable::EraseResult result = table.erase(p, &block);
        auto it = live.find(p);
        if (it != live.end()) {
          ASSERT_EQ(result, LiveBlockTable::EraseResult::erased) << "step " << step;
          ASSERT_EQ(block.requested, it->second.requested);
          live.erase(it);
        } else {
          // A double free is remembered for a while, then forgotten: never "erased".
          ASSERT_NE(result, LiveBlockTable::EraseResult::erased) << "step " << step;
        }
      }
      if (step % 1000 == 0) {
        for (const auto& [address, expected] : live) {
          ASSERT_TRUE(table.find(address, &block)) << "lost a live block at step " << step;
          ASSERT_EQ(block.requested, expected.requested);
        }
      }
    }
    for (int device = 0; device < 3; ++device) {
      std::uint64_t bytes = 0, count = 0, expected_bytes = 0, expected_count = 0;
      for (const auto& [address, block] : live) {
        if (block.device != device) continue;
        expected_bytes += block.requested;
        ++expected_count;
      }
      table.totals(device, &bytes, &count);
      EXPECT_EQ(bytes, expected_bytes);
      EXPECT_EQ(count, expected_count);
    }
  }
}

TEST(LiveBlockTableModel, ImmediateDoubleFreeIsAlwaysRecognised) {
  LiveBlockTable table;
  LiveBlock block;
  for (std::uintptr_t i = 0; i < 100000; ++i) {
    const std::uintptr_t p = 0x100000 + i * 256;
    table.insert(p, LiveBlock{1, 256, 0, false});
    ASSERT_EQ(table.erase(p, &block), LiveBlockTable::EraseResult::erased);
    ASSERT_EQ(table.erase(p, &block), LiveBlockTable::EraseResult::double_free);
  }
}

}  // namespace
}  // namespace gpushim
