// router/returned_blocks.*: completed fenced blocks back to the threads that freed them, linked
// statically (no driver call is made: a ThreadState and the registry are all it touches).
#include "router/returned_blocks.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "router/thread_state.h"

namespace gpushim::router {
namespace {

constexpr std::size_t kGiB = std::size_t{1} << 30;

void* ptr(std::uintptr_t i) { return reinterpret_cast<void*>(i << 30); }

// A batch comes in parts (the batches merged into it): the runs of one owner are its share of the batch,
// and an empty list takes them all, whatever their size, as it took one run before the parts. Taken
// one part at a time, the parts after the first went to the backend (router/returned_blocks.cpp,
// ListTakes, says what that cost).
TEST(ReturnedBlocks, AnEmptyListTakesEveryPartOfItsOwnersShare) {
  ThreadState* self = this_thread_state();
  ASSERT_NE(self, nullptr);
  ThreadBlockOwners owners(0);
  std::vector<FreedBlock> a = {{ptr(1), kGiB, 0, self}}, b = {{ptr(2), kGiB, 0, self}}, c = {{ptr(3), kGiB, 0, self}};
  std::vector<FreedBlock>* parts[] = {&a, &b, &c};
  owners.return_to_owners(parts, 3, 0);
  EXPECT_TRUE(a.empty() && b.empty() && c.empty()) << "a part went to the backend";
  EXPECT_EQ(self->returned[0].size(), 3u);
  EXPECT_EQ(self->returned_bytes[0], 3 * kGiB);

  // A list that held blocks before the give-back keeps its cap.
  std::vector<FreedBlock> d = {{ptr(4), kGiB, 0, self}};
  std::vector<FreedBlock>* more[] = {&d};
  owners.return_to_owners(more, 1, 0);
  EXPECT_EQ(d.size(), 1u) << "a list over its cap took more";
  EXPECT_EQ(self->returned[0].size(), 3u);
}

}  // namespace
}  // namespace gpushim::router
