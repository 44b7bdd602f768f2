// How freed blocks whose wait is over go back: first to the threads that freed them (BlockOwners, in
// router/free_fence_queue.h), then what those did not take to the backend, in chunks that need no
// allocation (every poll may hand blocks back). The fence queue's rounds (FreeFenceQueue::give_back)
// and a thread's passed marked batches (router/marked_batches.cpp) both go this way, and the returned
// lists' flushes take the backend half (hand_to_backend).
#pragma once

#include <cstddef>
#include <vector>

#include "allocators/allocator.h"
#include "router/free_fence_queue.h"

namespace gpushim {

class BlockHandBack {
 public:
  // Parts of blocks handed to the owners in one call: return_to_owners looks once at which threads are
  // alive for all of them (router/free_fence_queue.h, BlockOwners).
  static constexpr std::size_t kPartsPerOwnersCall = 32;
  // Blocks handed to the backend in one call (allocators/allocator.h says why this many).
  static constexpr std::size_t kBlocksPerBackendCall = kBlocksPerBatchCall;

  // `owners`: nullptr sends every block to the backend. The caller's own blocks of at most
  // `own_kept_bytes` stay for the backend (BlockOwners::return_to_owners).
  BlockHandBack(BlockOwners* owners, Allocator& backend, std::size_t own_kept_bytes) noexcept
      : owners_(owners), backend_(backend), own_kept_bytes_(own_kept_bytes) {}
  BlockHandBack(const BlockHandBack&) = delete;
  BlockHandBack& operator=(const BlockHandBack&) = delete;
  // The last chunk for the backend (and any owners' call still owed) goes as it leaves scope.
  ~BlockHandBack() {
    owners_done();
    flush_backend();
  }

  // Offers `blocks` to their owners, who take theirs out of it (later, in a call for up to
  // kPartsPerOwnersCall parts): `blocks` must live until owners_done().
  void offer_to_owners(std::vector<FreedBlock>& blocks) noexcept {
    if (!owners_) return;
    parts_[parts_count_++] = &blocks;
    if (parts_count_ == kPartsPerOwnersCall) owners_done();
  }
  // The owners' call for the parts offered so far: before those parts go to_backend.
  void owners_done() noexcept {
    if (parts_count_ > 0) owners_->return_to_owners(parts_, parts_count_, own_kept_bytes_);
    parts_count_ = 0;
  }
  // What is left of `blocks` goes to the backend, in freeing order.
  void to_backend(const std::vector<FreedBlock>& blocks) noexcept {
    for (const FreedBlock& block : blocks) {
      chunk_[in_chunk_++] = {block.ptr, block.bytes, block.stream};
      if (in_chunk_ == kBlocksPerBackendCall) flush_backend();
    }
  }

 private:
  void flush_backend() noexcept {
    if (in_chunk_ > 0) backend_.deallocate_batch(chunk_, in_chunk_);
    in_chunk_ = 0;
  }

  BlockOwners* const owners_;
  Allocator& backend_;
  const std::size_t own_kept_bytes_;
  std::vector<FreedBlock>* parts_[kPartsPerOwnersCall];
  std::size_t parts_count_ = 0;
  BlockToFree chunk_[kBlocksPerBackendCall];
  std::size_t in_chunk_ = 0;
};

// `blocks` to `backend` alone, in BlockHandBack's chunks: one hold of the arena's lock per
// kBlocksPerBackendCall blocks, not one per block (a returned list's flush, router/returned_blocks.cpp).
inline void hand_to_backend(Allocator& backend, const std::vector<FreedBlock>& blocks) noexcept {
  BlockHandBack(nullptr, backend, 0).to_backend(blocks);
}

}  // namespace gpushim
