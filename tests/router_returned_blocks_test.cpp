// router/returned_blocks.*: completed fenced blocks back to the threads that freed them, linked
// statically (no driver call is made: a ThreadState and the registry are all it touches).
#include "router/returned_blocks.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <future>
#include <thread>
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

// Only blocks of one owner in a row are one run: another owner's part in between ends it, and the
// owner's later part meets the cap, as a later run in one vector did before the parts.
TEST(ReturnedBlocks, AnotherOwnersPartEndsTheRun) {
  ThreadState* self = this_thread_state();
  ASSERT_NE(self, nullptr);
  self->returned[1].clear();
  self->returned_bytes[1] = 0;
  std::promise<ThreadState*> other_state;
  std::promise<void> done;
  std::thread other([&] {
    other_state.set_value(this_thread_state());
    done.get_future().wait();  // registered until the test is done with it
  });
  ThreadState* const peer = other_state.get_future().get();
  ThreadBlockOwners owners(1);
  std::vector<FreedBlock> a = {{ptr(1), kGiB, 0, self}}, b = {{ptr(2), kGiB, 0, peer}}, c = {{ptr(3), kGiB, 0, self}};
  std::vector<FreedBlock>* parts[] = {&a, &b, &c};
  owners.return_to_owners(parts, 3, 0);
  EXPECT_TRUE(a.empty()) << "the empty list did not take the first run";
  EXPECT_TRUE(b.empty()) << "the other owner's empty list did not take its run";
  EXPECT_EQ(c.size(), 1u) << "a later run of the owner went past the cap";
  EXPECT_EQ(self->returned[1].size(), 1u);
  EXPECT_EQ(peer->returned[1].size(), 1u);
  done.set_value();
  other.join();
}

}  // namespace
}  // namespace gpushim::router
