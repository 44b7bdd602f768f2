// A decorator that keeps a backend's bytes in use and their peak exact across threads (the one figure of
// RMM's statistics_resource_adaptor the backends cannot give: tiered's peak is at best the sum of its
// tiers' peaks). Everything else comes from the inner backend, which counts its own calls and failures
// and alone knows its memory fields; the router counts what the program asked for (its stats table).
// Each of those is counted once: this decorator used to count calls and bytes a third time, on the hot
// path.
//
// Why sharded: it wraps every backend, so it runs on every allocate and deallocate of every thread.
// One total shared by all threads puts one contended cache line on the hot path (a line transfer
// between cores on every call once several threads allocate). Each thread instead counts in one of
// kShards cache-line-sized shards (threads are dealt shards in turn), and stats() sums them.
// The peak is the one figure a sum cannot give afterwards: a shard's bytes in use move to one shared
// total only when they have drifted kFoldBytes from it, and each call checks "shared total + this
// shard's unfolded bytes" against the peak. One thread's peak is exact; with several threads the peak
// can miss up to kFoldBytes per other thread (their unfolded bytes), a few MiB in a GPU-sized figure.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "allocators/allocator.h"

namespace gpushim {

class StatisticsAllocator final : public Allocator {
 public:
  explicit StatisticsAllocator(std::unique_ptr<Allocator> inner) noexcept : inner_(std::move(inner)) {}

  const char* name() const noexcept override { return inner_->name(); }
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override;
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override;
  void* allocate_spilled(std::size_t bytes, StreamHandle stream) noexcept override;
  std::size_t release_cached() noexcept override { return inner_->release_cached(); }
  void release_idle() noexcept override { inner_->release_idle(); }
  bool release_due_with(std::uint64_t held_in_front) noexcept override {
    return inner_->release_due_with(held_in_front);
  }
  void hand_in_kept_blocks() noexcept override { inner_->hand_in_kept_blocks(); }
  AllocatorStats stats() const noexcept override;
  bool needs_free_fence() const noexcept override { return inner_->needs_free_fence(); }

  Allocator& inner() const noexcept { return *inner_; }

  static constexpr std::size_t kShards = 64;
  static constexpr std::int64_t kFoldBytes = std::int64_t{4} << 20;

 private:
  struct alignas(64) Shard {
    std::atomic<std::int64_t> unfolded_in_use{0};  // bytes in use not yet moved to folded_in_use_
  };
  Shard& this_thread_shard() noexcept;
  void account_in_use(Shard& shard, std::int64_t delta) noexcept;

  std::unique_ptr<Allocator> inner_;
  Shard shards_[kShards];
  alignas(64) std::atomic<std::int64_t> folded_in_use_{0};
  alignas(64) std::atomic<std::uint64_t> peak_bytes_in_use_{0};
};

}  // namespace gpushim
