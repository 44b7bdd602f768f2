// The live blocks with a front per thread (router/live_blocks.h).
#include "router/live_blocks.h"

#include <algorithm>
#include <new>

namespace gpushim {
namespace {

// A new generation per table and per fork reset: a thread's cached front names the generation it was
// taken in.
std::atomic<std::uint64_t> g_generations{0};

// Every table alive, so that a thread exiting after its table was destroyed (the tests') gives nothing
// back to it. Made on first use and never freed: threads exit after the static destructors have begun.
std::mutex& tables_lock() {
  static auto* lock = new std::mutex();
  return *lock;
}
std::vector<const LiveBlocks*>& tables() {
  static auto* alive = new std::vector<const LiveBlocks*>();
  return *alive;
}

}  // namespace

LiveBlocks::LiveBlocks()
    : generation_(g_generations.fetch_add(1, std::memory_order_relaxed) + 1) {
  std::lock_guard<std::mutex> guard(tables_lock());
  tables().push_back(this);
}

LiveBlocks::~LiveBlocks() {
  {
    std::lock_guard<std::mutex> guard(tables_lock());
    tables().erase(std::remove(tables().begin(), tables().end(), this), tables().end());
  }
  for (std::size_t i = 0; i < front_count_.load(std::memory_order_acquire); ++i) delete front_at(i);
}

LiveBlocks::ThreadExit::~ThreadExit() {
  t_front_gone = true;  // calls still to come on this thread (later destructors) use the shared table
  release_thread_front();
}

void LiveBlocks::release_thread_front() noexcept {
  const ThreadFront cached = t_front;
  t_front = ThreadFront{};
  if (!cached.table || !cached.front) return;
  // Under the registry's lock the table cannot be destroyed meanwhile.
  std::lock_guard<std::mutex> guard(tables_lock());
  if (std::find(tables().begin(), tables().end(), cached.table) == tables().end()) return;
  // A fork reset since: the front is no longer this thread's (the reset gave every front back, empty).
  if (cached.table->generation_.load(std::memory_order_acquire) != cached.generation) return;
  const_cast<LiveBlocks*>(cached.table)->give_back(cached.front);
}

LiveBlocks::Front* LiveBlocks::take_front() noexcept {
  if (t_front_gone) return nullptr;
  if (t_front.table) release_thread_front();  // another table's front (the tests'), or the parent's
  static thread_local ThreadExit exit_hook;
  exit_hook.armed = true;  // the first use on this thread registers its destructor
  const std::uint64_t generation = generation_.load(std::memory_order_acquire);
  Front* front = nullptr;
  {
    std::lock_guard<std::mutex> guard(fronts_lock_);
    const std::size_t count = front_count_.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < count && !front; ++i)
      if (!front_at(i)->owned) front = front_at(i);
    if (!front && count < kMaxFronts && (front = new (std::nothrow) Front())) {
      front->number = static_cast<std::uint8_t>(count + 1);
      fronts_[count].store(front, std::memory_order_release);
      front_count_.store(count + 1, std::memory_order_release);
    }
    if (front) front->owned = true;
  }
  // Without a front (kMaxFronts taken, or no host memory) the thread uses the shared table, and does not
  // ask again until its table changes.
  t_front = ThreadFront{this, generation, front};
  return front;
}

void LiveBlocks::wait_for_slot(const FrontSlot& slot) noexcept { slot.lock.lock(); }

void LiveBlocks::give_back(Front* front) noexcept {
  // Each live block moves to the shared table before it leaves its slot, both under the slot's lock,
  // and the move is counted before the lock is let go: a search that missed the block in the shared
  // table and then in this slot sees the count changed, and looks again.
  for (FrontSlot& slot : front->slots) {
    const std::uint8_t state = lock_slot(slot);
    if (state == kLive) {
      shared_.insert(slot.address, slot.block);
      moves_.fetch_add(1, std::memory_order_release);
    }
    slot.address = 0;
    slot.block = LiveBlock{};
    slot.erase_number = 0;
    unlock_slot(slot, kEmpty);
  }
  front->erase_count.store(0, std::memory_order_relaxed);
  std::lock_guard<std::mutex> guard(fronts_lock_);
  front->owned = false;
}

void LiveBlocks::insert_elsewhere(std::uintptr_t p, const LiveBlock& block) noexcept {
  shared_.insert(p, block);
  // A hint of the front that held p before would send its free there first (none before hints_wanted_).
  if (hints_wanted_.load(std::memory_order_relaxed)) note_owner(p, 0);
}

LiveBlocks::EraseResult LiveBlocks::erase_elsewhere(std::uintptr_t p, LiveBlock* out) noexcept {
  if (p == 0) return EraseResult::unknown;
  for (;;) {
    // Any order of places works: a block moves only at a thread's exit, which bumps `moves_`.
    const std::uint64_t moves = moves_.load(std::memory_order_acquire);
    if (Front* hinted = hinted_front(p)) {
      FrontSlot& slot = hinted->slots[front_slot(p)];
      const std::uint8_t state = lock_slot(slot);
      if (state == kLive && slot.address == p) {
        *out = slot.block;
        unlock_slot(slot, kFreedElsewhere);
        return EraseResult::erased;
      }
      unlock_slot(slot, state);
    }
    LiveBlock marker;
    bool freed_recently = false;
    switch (shared_.erase(p, &marker)) {
      case EraseResult::erased:
        *out = marker;
        return EraseResult::erased;
      case EraseResult::double_free: freed_recently = true; break;
      case EraseResult::unknown: break;
    }
    // Live in some thread's front wins over a freed marker anywhere: the address may have been freed by
    // one thread and handed out again to another.
    searches_.fetch_add(1, std::memory_order_relaxed);
    const std::size_t count = front_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < count; ++i) {
      Front& front = *front_at(i);
      FrontSlot& slot = front.slots[front_slot(p)];
      const std::uint8_t state = lock_slot(slot);
      if (state == kLive && slot.address == p) {
        *out = slot.block;
        unlock_slot(slot, kFreedElsewhere);
        want_hints();
        return EraseResult::erased;
      }
      if (!freed_recently && slot.address == p && remembered(front, slot, state)) {
        marker = slot.block;
        freed_recently = true;
      }
      unlock_slot(slot, state);
    }
    if (moves_.load(std::memory_order_acquire) != moves) continue;  // a thread exited meanwhile: again
    if (!freed_recently) return EraseResult::unknown;
    *out = marker;
    return EraseResult::double_free;
  }
}

LiveBlocks::Front* LiveBlocks::hinted_front(std::uintptr_t p) const noexcept {
  const std::uint8_t number = hints_[hint_slot(p)].load(std::memory_order_relaxed);
  if (number == 0 || number > front_count_.load(std::memory_order_acquire)) return nullptr;
  return front_at(number - 1u);
}

bool LiveBlocks::find(std::uintptr_t p, LiveBlock* out) const noexcept {
  if (p == 0) return false;
  for (;;) {
    const std::uint64_t moves = moves_.load(std::memory_order_acquire);
    const Front* hinted = hinted_front(p);
    if (hinted && live_at(hinted->slots[front_slot(p)], p, out)) return true;
    if (shared_.find(p, out)) return true;
    searches_.fetch_add(1, std::memory_order_relaxed);
    const std::size_t count = front_count_.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < count; ++i) {
      if (live_at(front_at(i)->slots[front_slot(p)], p, out)) {
        want_hints();
        return true;
      }
    }
    if (moves_.load(std::memory_order_acquire) == moves) return false;
  }
}

bool LiveBlocks::live_at(const FrontSlot& slot, std::uintptr_t p, LiveBlock* out) noexcept {
  const std::uint8_t state = lock_slot(slot);
  const bool live = state == kLive && slot.address == p;
  if (live) *out = slot.block;
  unlock_slot(slot, state);
  return live;
}

template <typename Visit>
void LiveBlocks::for_each_live(Visit visit) const {
  shared_.for_each_live(visit);
  const std::size_t count = front_count_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i) {
    for (const FrontSlot& slot : front_at(i)->slots) {
      const std::uint8_t state = lock_slot(slot);
      const Entry entry{slot.address, slot.block};
      unlock_slot(slot, state);
      if (state == kLive) visit(entry.address, entry.block);
    }
  }
}

bool LiveBlocks::find_containing(std::uintptr_t p, std::uintptr_t* base, LiveBlock* out) const noexcept {
  if (find(p, out)) {
    *base = p;
    return true;
  }
  // An interior pointer: every live block (a block moving at a thread's exit meanwhile may be missed,
  // as in a dump).
  return live_block_queries::containing([this](auto visit) { for_each_live(visit); }, p, base, out);
}

std::vector<LiveBlocks::Entry> LiveBlocks::largest(int device, std::size_t n) const {
  return live_block_queries::largest([this](auto visit) { for_each_live(visit); }, device, n);
}

std::size_t LiveBlocks::copy_live(std::size_t part, std::size_t from, Entry* out, std::size_t max,
                                  std::size_t* next) const noexcept {
  if (part < LiveBlockTable::kShards) return shared_.copy_live(part, from, out, max, next);
  *next = ~std::size_t{0};
  const std::size_t i = part - LiveBlockTable::kShards;
  if (i >= front_count_.load(std::memory_order_acquire)) return 0;
  const Front& front = *front_at(i);
  std::size_t copied = 0;
  std::size_t j = from;
  for (; j < kFrontSlots && copied < max; ++j) {
    const FrontSlot& slot = front.slots[j];
    const std::uint8_t state = lock_slot(slot);
    if (state == kLive) out[copied++] = Entry{slot.address, slot.block};
    unlock_slot(slot, state);
  }
  if (j < kFrontSlots) *next = j;
  return copied;
}

void LiveBlocks::totals(int device, std::uint64_t* bytes, std::uint64_t* count) const noexcept {
  live_block_queries::totals([this](auto visit) { for_each_live(visit); }, device, bytes, count);
}

void LiveBlocks::reset_after_fork() noexcept {
  // Only the forking thread exists: locks other parent threads held are garbage.
  new (&fronts_lock_) std::mutex();
  new (&tables_lock()) std::mutex();
  shared_.reset_after_fork();
  for (std::size_t i = 0; i < kHints; ++i) hints_[i].store(0, std::memory_order_relaxed);
  hints_wanted_.store(false, std::memory_order_relaxed);
  for (std::size_t i = 0; i < front_count_.load(std::memory_order_acquire); ++i) {
    Front& front = *front_at(i);
    for (FrontSlot& slot : front.slots) {  // a slot lock another parent thread held is garbage too
      slot.address = 0;
      slot.block = LiveBlock{};
      slot.erase_number = 0;
      slot.state = kEmpty;
      slot.lock.reset();
    }
    front.erase_count.store(0, std::memory_order_relaxed);
    front.owned = false;
  }
  generation_.store(g_generations.fetch_add(1, std::memory_order_relaxed) + 1, std::memory_order_release);
}

}  // namespace gpushim
