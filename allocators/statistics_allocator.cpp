#include "allocators/statistics_allocator.h"

#include <algorithm>

#include "allocators/raise_peak.h"

namespace gpushim {
namespace {

std::atomic<std::uint32_t> next_shard{0};
// The shard number + 1 of this thread (0: not dealt yet). initial-exec: a plain %fs load, no
// __tls_get_addr call, inside libgpushim.so (it is preloaded, so its TLS is in the static block).
thread_local std::uint32_t t_shard_plus_one __attribute__((tls_model("initial-exec"))) = 0;

}  // namespace

StatisticsAllocator::Shard& StatisticsAllocator::this_thread_shard() noexcept {
  std::uint32_t slot = t_shard_plus_one;
  if (slot == 0) t_shard_plus_one = slot = next_shard.fetch_add(1, std::memory_order_relaxed) % kShards + 1;
  return shards_[slot - 1];
}

void StatisticsAllocator::account_in_use(Shard& shard, std::int64_t delta) noexcept {
  std::int64_t unfolded = shard.unfolded_in_use.fetch_add(delta, std::memory_order_relaxed) + delta;
  std::int64_t folded = folded_in_use_.load(std::memory_order_relaxed);
  if (unfolded >= kFoldBytes || unfolded <= -kFoldBytes) {
    // Move what this shard holds to the shared total (exchange: another thread of this shard may add
    // concurrently, its bytes then move with ours or stay for its own next call).
    const std::int64_t moved = shard.unfolded_in_use.exchange(0, std::memory_order_relaxed);
    folded = folded_in_use_.fetch_add(moved, std::memory_order_relaxed) + moved;
    unfolded -= moved;
  }
  if (delta <= 0) return;
  const std::int64_t seen = folded + unfolded;
  if (seen <= 0) return;
  raise_peak(peak_bytes_in_use_, static_cast<std::uint64_t>(seen));
}

void* StatisticsAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  void* p = inner_->allocate(bytes, stream);
  if (p) account_in_use(this_thread_shard(), static_cast<std::int64_t>(bytes));
  return p;
}

void* StatisticsAllocator::allocate_spilled(std::size_t bytes, StreamHandle stream) noexcept {
  void* p = inner_->allocate_spilled(bytes, stream);
  if (p) account_in_use(this_thread_shard(), static_cast<std::int64_t>(bytes));
  return p;
}

void StatisticsAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  inner_->deallocate(p, bytes, stream);
  account_in_use(this_thread_shard(), -static_cast<std::int64_t>(bytes));
}

void StatisticsAllocator::deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept {
  std::int64_t bytes = 0;  // summed first: the layers under this one may overwrite `blocks`
  for (std::size_t i = 0; i < count; ++i) bytes += static_cast<std::int64_t>(blocks[i].bytes);
  inner_->deallocate_batch(blocks, count);
  account_in_use(this_thread_shard(), -bytes);
}

AllocatorStats StatisticsAllocator::stats() const noexcept {
  AllocatorStats s = inner_->stats();  // calls, failures and memory fields
  std::int64_t in_use = folded_in_use_.load(std::memory_order_relaxed);
  for (const Shard& shard : shards_) in_use += shard.unfolded_in_use.load(std::memory_order_relaxed);
  s.bytes_in_use = static_cast<std::uint64_t>(std::max<std::int64_t>(in_use, 0));
  s.peak_bytes_in_use = std::max(peak_bytes_in_use_.load(std::memory_order_relaxed), s.bytes_in_use);
  return s;
}

}  // namespace gpushim
