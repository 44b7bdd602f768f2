#include "router/live_block_table.h"

#include <algorithm>
#include <mutex>
#include <new>

namespace gpushim {
namespace {

// Slots a shard starts with. Past half occupied (live + freed) a shard is rebuilt (without its stale freed
// slots, unless their addresses come back: rebuild), twice as large while that leaves it more than a
// quarter full: linear probing stays short, and a rebuild comes at most once per quarter of its slots
// inserted.
constexpr std::size_t kInitialSlots = 64;

}  // namespace

LiveBlockTable::Slot* LiveBlockTable::find_slot(const Shard& shard, std::uintptr_t p) noexcept {
  if (!shard.slots) return nullptr;
  for (std::size_t i = probe_start(p, shard.capacity_mask);; i = (i + 1) & shard.capacity_mask) {
    Slot& slot = shard.slots[i];
    if (slot.state == SlotState::empty) return nullptr;
    if (slot.address == p) return &slot;
  }
}

bool LiveBlockTable::rebuild(Shard& shard) noexcept {
  // Which freed slots stay. A stale one answers "unknown" like an empty slot, so it is dropped: the table
  // does not grow with frees. But a block's address usually comes back (a backend hands its blocks out
  // again), and its next insert then finds its own slot, one probe in the inline path. Dropped, the
  // address appended a slot instead, and the shard was rebuilt again once half full. With a stream per
  // thread every free is fenced, so each thread cycles a few hundred blocks of its own (a batch in
  // flight, its returned list, its cache) rather than one. With 16 threads at 256 B on the H200, the
  // shards' locks in insert, behind those rebuilds and appends, took 13% of all samples (seventeenth
  // session, docs/perf-notes.md). So when three quarters of the inserts since the last rebuild were
  // addresses that had lost their slots (the `lost` bits), the freed slots stay, and the shard grows to
  // hold them, up to kMaxSlotsKeepingFreed slots. Addresses that never come back hit few of those bits,
  // and their shard stays as small as before.
  std::size_t keep = 0;   // live and remembered slots
  std::size_t stale = 0;  // freed slots no longer remembered (and forgotten ones)
  for (std::size_t i = 0; shard.slots && i <= shard.capacity_mask; ++i) {
    const Slot& slot = shard.slots[i];
    if (slot.state == SlotState::live || remembered(shard, slot)) ++keep;
    else if (slot.state != SlotState::empty) ++stale;
  }
  const bool keep_stale = shard.misses > 0 && shard.returned * 4 >= shard.misses * 3 &&
                          (keep + stale + 1) * 4 <= kMaxSlotsKeepingFreed;
  const std::size_t kept = keep + (keep_stale ? stale : 0);
  std::size_t capacity = shard.slots ? shard.capacity_mask + 1 : kInitialSlots;
  while ((kept + 1) * 4 > capacity) capacity *= 2;
  Slot* slots = new (std::nothrow) Slot[capacity];
  if (!slots) return false;
  const std::size_t mask = capacity - 1;
  for (std::size_t i = 0; shard.slots && i <= shard.capacity_mask; ++i) {
    const Slot& old = shard.slots[i];
    if (old.state == SlotState::empty) continue;
    if (old.state != SlotState::live && !remembered(shard, old) && !keep_stale) {
      mark_lost(shard, old.address);
      continue;
    }
    std::size_t j = probe_start(old.address, mask);
    while (slots[j].state != SlotState::empty) j = (j + 1) & mask;
    slots[j] = old;
  }
  delete[] shard.slots;
  shard.slots = slots;
  shard.capacity_mask = mask;
  shard.occupied = kept;
  shard.misses = 0;
  shard.returned = 0;
  ++shard.rebuilds;
  return true;
}

void LiveBlockTable::insert_locked(Shard& shard, std::uintptr_t p, const LiveBlock& block) noexcept {
  // An address that is live again must not be taken for a double free when it is freed: its freed slot
  // (if still there) becomes the live one. The walk goes to the end of the run (p may sit past a stale
  // slot), remembering the first stale slot, which p may take instead of lengthening the run.
  Slot* stale = nullptr;
  for (std::size_t i = probe_start(p, shard.capacity_mask); shard.slots; i = (i + 1) & shard.capacity_mask) {
    Slot& slot = shard.slots[i];
    if (slot.state == SlotState::empty) break;
    if (slot.address == p) {
      slot.block = block;
      slot.state = SlotState::live;
      return;
    }
    if (!stale && slot.state != SlotState::live && !remembered(shard, slot)) stale = &slot;
  }
  // No slot of its own: an address seen before that lost its slot (rebuild says what that decides)?
  ++shard.misses;
  if (was_lost(shard, p)) ++shard.returned;
  if (stale) {
    mark_lost(shard, stale->address);
    *stale = Slot{p, block, SlotState::live, 0};
    return;
  }
  if ((shard.occupied + 1) * 2 > (shard.slots ? shard.capacity_mask + 1 : 0) && !rebuild(shard) &&
      (!shard.slots || shard.occupied + 1 > shard.capacity_mask)) {
    // Out of host memory and the shard is full: the block stays unknown to us, so a later free of it goes
    // to the real driver, which answers with an error. Nothing better is possible without memory.
    return;
  }
  std::size_t i = probe_start(p, shard.capacity_mask);
  while (shard.slots[i].state != SlotState::empty) i = (i + 1) & shard.capacity_mask;
  shard.slots[i] = Slot{p, block, SlotState::live, 0};
  ++shard.occupied;
}

LiveBlockTable::EraseResult LiveBlockTable::erase_locked(Shard& shard, std::uintptr_t p, LiveBlock* out) noexcept {
  Slot* slot = find_slot(shard, p);
  if (!slot) return EraseResult::unknown;
  if (slot->state != SlotState::live) {
    if (!remembered(shard, *slot)) return EraseResult::unknown;
    *out = slot->block;
    return EraseResult::double_free;
  }
  *out = slot->block;
  mark_freed(shard, *slot);
  return EraseResult::erased;
}

void LiveBlockTable::forget_stale(Shard& shard) noexcept {
  for (std::size_t i = 0; i <= shard.capacity_mask; ++i) {
    Slot& slot = shard.slots[i];
    if (slot.state == SlotState::freed && !remembered(shard, slot)) slot.state = SlotState::forgotten;
  }
}

bool LiveBlockTable::find(std::uintptr_t p, LiveBlock* out) const noexcept {
  const Shard& shard = shards_[shard_of(p)];
  std::lock_guard<SpinLock> guard(shard.lock);
  const Slot* slot = find_slot(shard, p);
  if (!slot || slot->state != SlotState::live) return false;
  *out = slot->block;
  return true;
}

bool LiveBlockTable::find_containing(std::uintptr_t p, std::uintptr_t* base, LiveBlock* out) const noexcept {
  if (find(p, out)) {
    *base = p;
    return true;
  }
  // An interior pointer hashes elsewhere than its block: look at every live block.
  return live_block_queries::containing([this](auto visit) { for_each_live(visit); }, p, base, out);
}

std::vector<LiveBlockTable::Entry> LiveBlockTable::largest(int device, std::size_t n) const {
  return live_block_queries::largest([this](auto visit) { for_each_live(visit); }, device, n);
}

std::size_t LiveBlockTable::copy_live(std::size_t shard_index, std::size_t from, Entry* out, std::size_t max,
                                      std::size_t* next) const noexcept {
  std::size_t copied = 0;
  *next = ~std::size_t{0};
  if (shard_index >= kShards) return 0;
  const Shard& shard = shards_[shard_index];
  std::lock_guard<SpinLock> guard(shard.lock);
  if (!shard.slots) return 0;
  std::size_t i = from;
  for (; i <= shard.capacity_mask && copied < max; ++i)
    if (shard.slots[i].state == SlotState::live) out[copied++] = Entry{shard.slots[i].address, shard.slots[i].block};
  if (i <= shard.capacity_mask) *next = i;
  return copied;
}

void LiveBlockTable::totals(int device, std::uint64_t* bytes, std::uint64_t* count) const noexcept {
  live_block_queries::totals([this](auto visit) { for_each_live(visit); }, device, bytes, count);
}

void LiveBlockTable::reset_after_fork() noexcept {
  for (Shard& shard : shards_) {
    shard.lock.reset();
    // The parent's blocks live in the parent's contexts, which the child does not have: forgotten, a
    // parent pointer is a stranger whose free goes to the driver (and the slots stay for the child's own).
    for (std::size_t i = 0; shard.slots && i <= shard.capacity_mask; ++i) shard.slots[i] = Slot{};
    shard.occupied = 0;
    shard.erase_count = 0;
    shard.misses = 0;
    shard.returned = 0;
    shard.lost_count = 0;
    if (shard.lost) std::fill(shard.lost, shard.lost + kLostBits / 64, 0);
  }
}

std::uint64_t LiveBlockTable::rebuilds() const noexcept {
  std::uint64_t count = 0;
  for (const Shard& shard : shards_) {
    std::lock_guard<SpinLock> guard(shard.lock);
    count += shard.rebuilds;
  }
  return count;
}

std::size_t LiveBlockTable::slot_capacity() const noexcept {
  std::size_t slots = 0;
  for (const Shard& shard : shards_) {
    std::lock_guard<SpinLock> guard(shard.lock);
    if (shard.slots) slots += shard.capacity_mask + 1;
  }
  return slots;
}

}  // namespace gpushim
