#include "router/live_block_table.h"

#include <algorithm>
#include <new>

namespace gpushim {

void LiveBlockTable::insert(std::uintptr_t p, const LiveBlock& block) noexcept {
  Shard& shard = shards_[shard_of(p)];
  std::lock_guard<std::mutex> guard(shard.lock);
  try {
    shard.live[p] = block;
  } catch (...) {
    // Out of host memory while inserting: the block stays unknown to us, so a later free of it goes
    // to the real driver, which answers with an error. Nothing better is possible without memory.
  }
  // An address that is live again must not be taken for a double free when it is freed.
  for (Entry& recent : shard.recently_freed)
    if (recent.address == p) recent.address = 0;
}

LiveBlockTable::EraseResult LiveBlockTable::erase(std::uintptr_t p, LiveBlock* out) noexcept {
  Shard& shard = shards_[shard_of(p)];
  std::lock_guard<std::mutex> guard(shard.lock);
  auto it = shard.live.find(p);
  if (it != shard.live.end()) {
    *out = it->second;
    shard.live.erase(it);
    shard.recently_freed[shard.next_recent] = Entry{p, *out};
    shard.next_recent = (shard.next_recent + 1) % kRecentlyFreedPerShard;
    return EraseResult::erased;
  }
  for (const Entry& recent : shard.recently_freed) {
    if (recent.address == p && p != 0) {
      *out = recent.block;
      return EraseResult::double_free;
    }
  }
  return EraseResult::unknown;
}

bool LiveBlockTable::find(std::uintptr_t p, LiveBlock* out) const noexcept {
  const Shard& shard = shards_[shard_of(p)];
  std::lock_guard<std::mutex> guard(shard.lock);
  auto it = shard.live.find(p);
  if (it == shard.live.end()) return false;
  *out = it->second;
  return true;
}

bool LiveBlockTable::find_containing(std::uintptr_t p, std::uintptr_t* base,
                                     LiveBlock* out) const noexcept {
  if (find(p, out)) {
    *base = p;
    return true;
  }
  // An interior pointer hashes elsewhere than its block: ask every shard for its nearest block below p.
  // Cold path (pointer-attribute and IPC hooks), 64 ordered-map lookups.
  for (const Shard& shard : shards_) {
    std::lock_guard<std::mutex> guard(shard.lock);
    auto it = shard.live.upper_bound(p);
    if (it == shard.live.begin()) continue;
    --it;
    if (p - it->first < std::max<std::size_t>(it->second.requested, 1)) {
      *base = it->first;
      *out = it->second;
      return true;
    }
  }
  return false;
}

std::vector<LiveBlockTable::Entry> LiveBlockTable::largest(int device, std::size_t n) const {
  std::vector<Entry> top;
  if (n == 0) return top;
  auto larger = [](const Entry& a, const Entry& b) { return a.block.requested > b.block.requested; };
  for (const Shard& shard : shards_) {
    std::lock_guard<std::mutex> guard(shard.lock);
    for (const auto& [address, block] : shard.live) {
      if (block.device != device) continue;
      Entry entry{address, block};
      if (top.size() < n) {
        top.push_back(entry);
        std::push_heap(top.begin(), top.end(), larger);  // min-heap on size: top.front() is smallest
      } else if (block.requested > top.front().block.requested) {
        std::pop_heap(top.begin(), top.end(), larger);
        top.back() = entry;
        std::push_heap(top.begin(), top.end(), larger);
      }
    }
  }
  std::sort(top.begin(), top.end(), larger);
  return top;
}

void LiveBlockTable::totals(int device, std::uint64_t* bytes, std::uint64_t* count) const noexcept {
  *bytes = 0;
  *count = 0;
  for (const Shard& shard : shards_) {
    std::lock_guard<std::mutex> guard(shard.lock);
    for (const auto& entry : shard.live) {
      if (entry.second.device != device) continue;
      *bytes += entry.second.requested;
      ++*count;
    }
  }
}

void LiveBlockTable::reset_after_fork() noexcept {
  for (Shard& shard : shards_) new (&shard.lock) std::mutex();
}

}  // namespace gpushim
