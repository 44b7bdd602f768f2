#include "router/live_block_table.h"

#include <algorithm>
#include <mutex>
#include <new>

namespace gpushim {
namespace {

// Slots a shard starts with; it doubles when more than half are occupied (linear probing stays short).
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

bool LiveBlockTable::grow(Shard& shard) noexcept {
  const std::size_t capacity = shard.slots ? (shard.capacity_mask + 1) * 2 : kInitialSlots;
  Slot* slots = new (std::nothrow) Slot[capacity];
  if (!slots) return false;
  const std::size_t mask = capacity - 1;
  if (shard.slots) {
    for (std::size_t i = 0; i <= shard.capacity_mask; ++i) {
      const Slot& old = shard.slots[i];
      if (old.state == SlotState::empty) continue;
      std::size_t j = probe_start(old.address, mask);
      while (slots[j].state != SlotState::empty) j = (j + 1) & mask;
      slots[j] = old;
    }
    delete[] shard.slots;
  }
  shard.slots = slots;
  shard.capacity_mask = mask;
  return true;
}

// Backward-shift deletion: later slots of the probe run move up, so no tombstones are needed.
void LiveBlockTable::remove_slot(Shard& shard, Slot* slot) noexcept {
  const std::size_t mask = shard.capacity_mask;
  std::size_t hole = static_cast<std::size_t>(slot - shard.slots);
  for (std::size_t i = (hole + 1) & mask;; i = (i + 1) & mask) {
    Slot& next = shard.slots[i];
    if (next.state == SlotState::empty) break;
    const std::size_t home = probe_start(next.address, mask);
    // `next` may move into the hole only if its home is not cyclically within (hole, i].
    const bool home_after_hole = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
    if (home_after_hole) continue;
    shard.slots[hole] = next;
    hole = i;
  }
  shard.slots[hole] = Slot{};
  --shard.occupied;
}

void LiveBlockTable::insert(std::uintptr_t p, const LiveBlock& block) noexcept {
  Shard& shard = shards_[shard_of(p)];
  std::lock_guard<SpinLock> guard(shard.lock);
  // An address that is live again must not be taken for a double free when it is freed: its freed slot
  // (if still remembered) becomes the live one.
  if (Slot* slot = find_slot(shard, p)) {
    slot->block = block;
    slot->state = SlotState::live;
    return;
  }
  if ((shard.occupied + 1) * 2 > (shard.slots ? shard.capacity_mask + 1 : 0) && !grow(shard) &&
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

LiveBlockTable::EraseResult LiveBlockTable::erase(std::uintptr_t p, LiveBlock* out) noexcept {
  if (p == 0) return EraseResult::unknown;
  Shard& shard = shards_[shard_of(p)];
  std::lock_guard<SpinLock> guard(shard.lock);
  Slot* slot = find_slot(shard, p);
  if (!slot) return EraseResult::unknown;
  *out = slot->block;
  if (slot->state == SlotState::freed) return EraseResult::double_free;
  slot->state = SlotState::freed;
  slot->erase_number = ++shard.erase_count;
  // The ring keeps the last kRecentlyFreedPerShard erases; the one it forgets leaves the table, unless
  // its address was made live (or freed) again since.
  RecentErase& oldest = shard.recent[shard.next_recent];
  if (oldest.address != 0) {
    Slot* forgotten = find_slot(shard, oldest.address);
    if (forgotten && forgotten->state == SlotState::freed && forgotten->erase_number == oldest.erase_number)
      remove_slot(shard, forgotten);
  }
  oldest = RecentErase{p, shard.erase_count};
  shard.next_recent = (shard.next_recent + 1) % kRecentlyFreedPerShard;
  return EraseResult::erased;
}

bool LiveBlockTable::find(std::uintptr_t p, LiveBlock* out) const noexcept {
  const Shard& shard = shards_[shard_of(p)];
  std::lock_guard<SpinLock> guard(shard.lock);
  const Slot* slot = find_slot(shard, p);
  if (!slot || slot->state != SlotState::live) return false;
  *out = slot->block;
  return true;
}

template <typename Visit>
void LiveBlockTable::for_each_live(Visit visit) const {
  for (const Shard& shard : shards_) {
    std::lock_guard<SpinLock> guard(shard.lock);
    if (!shard.slots) continue;
    for (std::size_t i = 0; i <= shard.capacity_mask; ++i)
      if (shard.slots[i].state == SlotState::live) visit(shard.slots[i].address, shard.slots[i].block);
  }
}

bool LiveBlockTable::find_containing(std::uintptr_t p, std::uintptr_t* base, LiveBlock* out) const noexcept {
  if (find(p, out)) {
    *base = p;
    return true;
  }
  // An interior pointer hashes elsewhere than its block: look at every live block. Blocks do not
  // overlap, so at most one contains p.
  bool found = false;
  for_each_live([&](std::uintptr_t address, const LiveBlock& block) {
    if (!found && p > address && p - address < std::max<std::size_t>(block.requested, 1)) {
      *base = address;
      *out = block;
      found = true;
    }
  });
  return found;
}

std::vector<LiveBlockTable::Entry> LiveBlockTable::largest(int device, std::size_t n) const {
  std::vector<Entry> top;
  if (n == 0) return top;
  auto larger = [](const Entry& a, const Entry& b) { return a.block.requested > b.block.requested; };
  top.reserve(n + 1);  // the visit below must not throw while a shard lock is held
  for_each_live([&](std::uintptr_t address, const LiveBlock& block) {
    if (block.device != device) return;
    Entry entry{address, block};
    if (top.size() < n) {
      top.push_back(entry);
      std::push_heap(top.begin(), top.end(), larger);  // min-heap on size: top.front() is smallest
    } else if (block.requested > top.front().block.requested) {
      std::pop_heap(top.begin(), top.end(), larger);
      top.back() = entry;
      std::push_heap(top.begin(), top.end(), larger);
    }
  });
  std::sort(top.begin(), top.end(), larger);
  return top;
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
  *bytes = 0;
  *count = 0;
  for_each_live([&](std::uintptr_t, const LiveBlock& block) {
    if (block.device != device) return;
    *bytes += block.requested;
    ++*count;
  });
}

void LiveBlockTable::reset_after_fork() noexcept {
  for (Shard& shard : shards_) {
    shard.lock.reset();
    // The parent's blocks live in the parent's contexts, which the child does not have: forgotten, a
    // parent pointer is a stranger whose free goes to the driver (and the slots stay for the child's own).
    for (std::size_t i = 0; shard.slots && i <= shard.capacity_mask; ++i) shard.slots[i] = Slot{};
    shard.occupied = 0;
    for (RecentErase& recent : shard.recent) recent = RecentErase{};
    shard.next_recent = 0;
  }
}

}  // namespace gpushim
