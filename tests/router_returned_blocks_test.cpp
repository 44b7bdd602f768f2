// router/returned_blocks.*: completed fenced blocks back to the threads that freed them, linked
// statically (no driver call is made: a ThreadState and the registry are all it touches).
#include "router/returned_blocks.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "router/router_state.h"
#include "router/thread_state.h"
#include "tests/recording_backend.h"

namespace gpushim::router {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::size_t kGiB = std::size_t{1} << 30;

void* ptr(std::uintptr_t i) { return reinterpret_cast<void*>(i << 30); }

// A device of ordinal `d` over a backend that serves nothing (testing::RecordingBackend):
// take_returned_block reads its ordinal and, for a size the list does not hold, gives the list to its
// backend.
std::unique_ptr<DeviceState> null_device(int d) {
  BackendStack stack;
  stack.backend = std::make_unique<testing::RecordingBackend>();
  stack.properties.fenced = true;
  static const std::atomic<int> no_captures{0};
  return std::make_unique<DeviceState>(d, std::move(stack), no_captures, std::chrono::nanoseconds(0),
                                       std::chrono::seconds(1));
}

std::vector<FreedBlock> blocks_of(ThreadState* owner, std::uintptr_t first, int count, std::size_t bytes) {
  std::vector<FreedBlock> blocks;
  for (int i = 0; i < count; ++i) blocks.push_back({ptr(first + std::uintptr_t(i)), bytes, 0, owner});
  return blocks;
}

// `blocks` given back to their owners through `owners` as one part; returns how many are left for the
// backend.
std::size_t give_back(ThreadBlockOwners& owners, std::vector<FreedBlock> blocks) {
  std::vector<FreedBlock>* parts[] = {&blocks};
  owners.return_to_owners(parts, 1, 0);
  return blocks.size();
}

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

// Bytes a list kept through a whole round of its owner's allocations were not needed: half of them stay
// out of the next give-back, for the backend (router/returned_blocks.cpp, surplus_of). Without that a
// list filled to its cap and held it (16 threads with a stream each on the H200: 16 x 128 MiB).
TEST(ReturnedBlocks, AGiveBackLeavesOutHalfOfWhatTheListKeptUnusedSinceTheLast) {
  ThreadState* self = this_thread_state();
  ASSERT_NE(self, nullptr);
  constexpr int d = 2;
  const std::unique_ptr<DeviceState> device = null_device(d);
  ThreadBlockOwners owners(d);
  EXPECT_EQ(give_back(owners, blocks_of(self, 100, 8, kMiB)), 0u) << "an empty list did not take the give-back";
  for (int i = 0; i < 2; ++i) ASSERT_NE(take_returned_block(*self, *device, kMiB), nullptr);
  // Six blocks were never taken in that round: three of them are surplus.
  EXPECT_EQ(give_back(owners, blocks_of(self, 200, 4, kMiB)), 3u) << "the list took back its unused blocks";
  EXPECT_EQ(self->returned[d].size(), 7u);
  // No take since: nothing to judge by, the give-back is taken whole (within the cap).
  EXPECT_EQ(give_back(owners, blocks_of(self, 300, 4, kMiB)), 0u) << "a give-back with no take since the last was cut";
  // An owner that takes nearly all it gets keeps all of the next give-back.
  ASSERT_EQ(self->returned[d].size(), 11u);
  for (int i = 0; i < 10; ++i) ASSERT_NE(take_returned_block(*self, *device, kMiB), nullptr);
  EXPECT_EQ(give_back(owners, blocks_of(self, 400, 4, kMiB)), 0u) << "a list its owner drew down to one block gave blocks away";
  EXPECT_EQ(self->returned[d].size(), 5u);
  self->returned[d].clear();
  self->returned_bytes[d] = 0;
}

// A list whose owner asks for another size goes to the backend, and so does every list under memory
// pressure: in chunks of BlockHandBack::kBlocksPerBackendCall, one hold of the arena's lock each, not
// one hold per block (router/block_hand_back.h, hand_to_backend).
TEST(ReturnedBlocks, FlushedListsGoToTheBackendInChunks) {
  ThreadState* self = this_thread_state();
  ASSERT_NE(self, nullptr);
  constexpr int d = 3;
  const std::unique_ptr<DeviceState> device = null_device(d);
  auto& backend = static_cast<testing::RecordingBackend&>(device->backend());
  ThreadBlockOwners owners(d);
  ASSERT_EQ(give_back(owners, blocks_of(self, 500, 40, kMiB)), 0u) << "an empty list did not take the give-back";
  ASSERT_EQ(self->returned[d].size(), 40u);
  EXPECT_EQ(take_returned_block(*self, *device, 2 * kMiB), nullptr) << "a list without the size served it";
  EXPECT_TRUE(self->returned[d].empty());
  EXPECT_EQ(self->returned_bytes[d], 0u);
  EXPECT_EQ(backend.returned.size(), 40u);
  EXPECT_EQ(backend.batch_calls, 2) << "40 blocks went to the backend in other than two chunks (32 and 8)";

  ASSERT_EQ(give_back(owners, blocks_of(self, 600, 40, kMiB)), 0u) << "the flushed list did not take a give-back";
  ASSERT_EQ(self->returned[d].size(), 40u);
  EXPECT_EQ(take_all_returned_blocks(*device), 40 * kMiB);
  EXPECT_TRUE(self->returned[d].empty());
  EXPECT_EQ(backend.returned.size(), 80u);
  EXPECT_EQ(backend.batch_calls, 4) << "the pressure path's take went to the backend in other than two chunks";
}

}  // namespace
}  // namespace gpushim::router
