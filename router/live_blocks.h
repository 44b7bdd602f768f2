// Which blocks gpushim has handed out, as every allocate and free asks: a small table per thread (its
// front) in front of the shared, sharded LiveBlockTable (router/live_block_table.h).
//
// Why a front. With a stream per thread every free is fenced, and 16 threads at 256 B spent about 10% of
// all samples on the shared table's shard headers (seventeenth session, docs/perf-notes.md): every insert
// and erase takes its shard's lock, and every thread's blocks hash to every shard, so each shard's header
// line moved from core to core on nearly every call. A thread's allocations now go to its own front, a
// direct-mapped table that only it writes in the common case, and its free of its own block is found
// there: the slot's own lock (a byte in the slot's line), on a line that stays in its core's cache.
//
// Where a block is. A live block is in exactly one place: the front of the thread that allocated it, or
// the shared table (its front slot held another live block, the thread had no front, or the thread
// exited: its front's live blocks move to the shared table then, the only move there is). So a free
// that finds the block live in its own front is done; anything else (a block of another thread, a block
// in the shared table, a double free, a stranger) looks in the front its owner hint names (below), the
// shared table, and then every front, and a live find anywhere wins over a freed marker anywhere (an
// address freed by one thread may be live again in another's front). A move at thread exit bumps
// `moves_`, and a search that saw it change looks again, so a block is never missed while it moves.
//
// Double frees. A front keeps a freed block's slot as a marker, remembered while fewer than
// kRecentlyFreedPerFront erases of that front followed it (and until another block takes the slot), as
// the shared table's shards do per shard; a slot freed by another thread stays remembered until it is
// taken again (that free leaves the owner's count alone, so that it touches only the slot's line). A
// free of a remembered address that is live nowhere is our double free; a stale one is a stranger's
// (the driver's own answer). A thread's exit drops its
// front's markers: a second free of a block freed just before its thread exited goes to the driver,
// as a stale marker's does, and the driver refuses an address it did not allocate.
//
// A block freed by another thread. Each insert into a front notes the front's number in a hashed byte
// per address (`hints_`, written only when it changes: a thread's addresses keep their owner, so the
// lines stay shared in every core's cache), and a free that misses its own front looks in the front
// the hint names first. Without it 16 threads freeing each other's blocks searched every front, under
// 16 locks each written by its owner on every call: 1.7 M pairs/s where the shared table alone moved 23
// (alloc_bench --patterns handoff, eighteenth session, docs/perf-notes.md); with the hint and one lock
// per front, 19.9 against 25.9; with a lock per slot, 25.4. A free that the hint does not answer (a
// hint overwritten by another address, a double free, a stranger) searches every front (at most
// kMaxFronts, one slot of each, under that slot's lock).
// Hints are noted only once some thread's block was freed or found by another thread (`hints_wanted_`):
// until then no insert reads or writes one. Where each thread frees its own blocks they answer nothing,
// and a thread whose addresses keep changing (mixed sizes from an arena of its own) stored into lines
// other threads had just written: the hint's load was 2.0-2.5% of 16 such threads' wall-clock samples
// on the H200 (docs/perf-notes.md, forty-eighth session). The first free that needs a hint searches
// every front, as one whose hint was overwritten does, and turns them on for good.
// Pure C++ (no CUDA): tested on the CPU in tests/router_live_blocks_test.cpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "diagnostics/hot_tls.h"
#include "router/live_block_table.h"
#include "router/spin_lock.h"

#pragma GCC visibility push(hidden)  // the thread-locals: router/router_state.h says why

namespace gpushim {

class LiveBlocks {
 public:
  using EraseResult = LiveBlockTable::EraseResult;
  using Entry = LiveBlockTable::Entry;

  // 1024 slots of 64 B: 64 KiB a thread. Direct-mapped, so a thread's live blocks collide: an insert
  // whose slot holds another live block goes to the shared table, and its free after it (a shard's
  // lock, a line every thread writes). A thread with 64 blocks live found its slot taken on ~25% of
  // inserts with 256 slots; with 1024, ~6%: 16 threads of mixed sizes on the H200 moved 2-6% more
  // pairs, the median pair 12% faster (docs/perf-notes.md, forty-seventh session).
  static constexpr std::size_t kFrontSlots = 1024;
  // Threads with a front at once (a thread that exits gives its front to the next): past this many, a
  // thread uses the shared table alone. Bounds the fronts' memory (8 MiB) and a cross-thread search.
  static constexpr std::size_t kMaxFronts = 128;
  static constexpr std::uint32_t kRecentlyFreedPerFront = 64;
  // The owner hints: one byte per hashed address (0: none, else a front's number).
  static constexpr std::size_t kHints = std::size_t{1} << 16;
  static_assert(kMaxFronts < 256, "a front's number fits a hint byte");
  // copy_live's parts: the shared table's shards, then the fronts.
  static constexpr std::size_t kParts = LiveBlockTable::kShards + kMaxFronts;

  LiveBlocks();
  ~LiveBlocks();  // the tests' tables; the router's lives as long as the process
  LiveBlocks(const LiveBlocks&) = delete;
  LiveBlocks& operator=(const LiveBlocks&) = delete;

  // Inline, the rest out of line: with the shared table's inline path in it GCC made this a call (+22
  // instructions a pair in scripts/instructions_per_pair.sh).
  __attribute__((always_inline)) void insert(std::uintptr_t p, const LiveBlock& block) noexcept {
    if (Front* front = this_thread_front()) {
      FrontSlot& slot = front->slots[front_slot(p)];
      const std::uint8_t state = lock_slot(slot);
      if (state != kLive) {
        slot.address = p;
        slot.block = block;
        unlock_slot(slot, kLive);
        if (hints_wanted_.load(std::memory_order_relaxed)) note_owner(p, front->number);
        return;
      }
      unlock_slot(slot, state);
    }
    insert_elsewhere(p, block);
  }
  __attribute__((always_inline)) EraseResult erase(std::uintptr_t p, LiveBlock* out) noexcept {
    if (Front* front = this_thread_front()) {
      FrontSlot& slot = front->slots[front_slot(p)];
      const std::uint8_t state = lock_slot(slot);
      if (state == kLive && slot.address == p) {
        *out = slot.block;
        // The owner's count: only the owner writes it, so a load and a store.
        const std::uint32_t erases = front->erase_count.load(std::memory_order_relaxed) + 1;
        front->erase_count.store(erases, std::memory_order_relaxed);
        slot.erase_number = erases;
        unlock_slot(slot, kFreed);
        return EraseResult::erased;
      }
      unlock_slot(slot, state);
    }
    return erase_elsewhere(p, out);
  }
  bool find(std::uintptr_t p, LiveBlock* out) const noexcept;
  // As LiveBlockTable::find_containing: a base pointer is found at once, an interior one by a scan.
  bool find_containing(std::uintptr_t p, std::uintptr_t* base, LiveBlock* out) const noexcept;
  // Up to `n` largest live blocks of `device`, largest first (for the out-of-memory report).
  std::vector<Entry> largest(int device, std::size_t n) const;
  // As LiveBlockTable::copy_live, over kParts parts: the shared table's shards, then the fronts.
  std::size_t copy_live(std::size_t part, std::size_t from, Entry* out, std::size_t max,
                        std::size_t* next) const noexcept;
  void totals(int device, std::uint64_t* bytes, std::uint64_t* count) const noexcept;
  // In a forked child: forgets every block and every recent free, and every thread's front (the child's
  // one thread takes a front again at its next call).
  void reset_after_fork() noexcept;

  // For tests: fronts made so far, and the shared table beneath.
  std::size_t fronts() const noexcept { return front_count_.load(std::memory_order_acquire); }
  // For tests: searches of every front so far (frees and finds the owner hint did not answer).
  std::uint64_t searches() const noexcept { return searches_.load(std::memory_order_relaxed); }
  // For tests: whether inserts note their owner (a block was freed or found by another thread).
  bool hints_wanted() const noexcept { return hints_wanted_.load(std::memory_order_relaxed); }
  const LiveBlockTable& shared() const noexcept { return shared_; }

  // Blocks are >= 256-byte aligned; a Fibonacci multiply, whose top bits pick a front slot and a hint.
  static std::uint64_t address_hash(std::uintptr_t p) noexcept { return (p >> 8) * 0x9E3779B97F4A7C15ull; }
  static std::size_t front_slot(std::uintptr_t p) noexcept {
    return static_cast<std::size_t>(address_hash(p) >> 54);  // top 10 bits
  }
  static_assert(kFrontSlots == 1024, "front_slot() takes the top 10 bits");

 private:
  // A front slot's state. kFreedElsewhere: freed by another thread, which does not touch the owner's
  // erase count; remembered until the slot is taken again.
  static constexpr std::uint8_t kEmpty = 0, kLive = 1, kFreed = 2, kFreedElsewhere = 3;
  struct alignas(64) FrontSlot {
    std::uintptr_t address = 0;
    LiveBlock block;
    mutable SpinLock lock;
    mutable std::uint8_t state = kEmpty;  // under `lock`
    std::uint32_t erase_number = 0;       // which erase of the front marked it freed
  };
  static_assert(sizeof(FrontSlot) == 64, "a slot is one cache line");
  // Each slot is locked on its own, not the front: the owner's calls and another thread's free of one of
  // its blocks meet only on that block's line. With one lock per front, 16 threads freeing each other's
  // blocks moved the owners' lock lines between cores on every such free.
  // The wait out of line: inline, SpinLock's spin loop cost the common path ~20 instructions a pair in
  // spilled registers.
  static std::uint8_t lock_slot(const FrontSlot& slot) noexcept {  // returns the slot's state
    if (__builtin_expect(!slot.lock.try_lock(), 0)) wait_for_slot(slot);
    return slot.state;
  }
  static void wait_for_slot(const FrontSlot& slot) noexcept;
  static void unlock_slot(const FrontSlot& slot, std::uint8_t state) noexcept {
    slot.state = state;
    slot.lock.unlock();
  }
  struct alignas(64) Front {
    // Erases of this front by its owner (only the owner writes it; searches read it).
    std::atomic<std::uint32_t> erase_count{0};
    bool owned = false;  // a thread holds it; under fronts_lock_
    std::uint8_t number = 0;  // its index in fronts_ plus one: what the owner hints name
    FrontSlot slots[kFrontSlots];
  };
  // The calling thread's front: t_front, when it was taken from this table in this generation.
  // No member initializers (a static member of this class cannot use them here): value-initialized.
  struct ThreadFront {
    const LiveBlocks* table;
    std::uint64_t generation;
    Front* front;  // nullptr: no front for this thread (kMaxFronts taken, or no host memory)
  };
  static inline GPUSHIM_HOT_TLS ThreadFront t_front{};
  static inline GPUSHIM_HOT_TLS bool t_front_gone = false;  // this thread has begun to exit
  // A thread's first front registers this; its destructor gives the front back at thread exit.
  struct ThreadExit {
    bool armed = false;
    ~ThreadExit();
  };
  static void release_thread_front() noexcept;  // gives the calling thread's front back, if it has one

  // `state`: the slot's, read under its lock.
  static bool remembered(const Front& front, const FrontSlot& slot, std::uint8_t state) noexcept {
    return state == kFreedElsewhere ||
           (state == kFreed &&
            front.erase_count.load(std::memory_order_relaxed) - slot.erase_number < kRecentlyFreedPerFront);
  }
  static std::size_t hint_slot(std::uintptr_t p) noexcept {
    return static_cast<std::size_t>(address_hash(p) >> 48);  // top 16 bits
  }
  static_assert(kHints == std::size_t{1} << 16, "hint_slot() takes the top 16 bits");
  // Stored only when it changes: the line stays shared while a thread's addresses keep their owner.
  void note_owner(std::uintptr_t p, std::uint8_t number) noexcept {
    std::atomic<std::uint8_t>& hint = hints_[hint_slot(p)];
    if (hint.load(std::memory_order_relaxed) != number) hint.store(number, std::memory_order_relaxed);
  }
  // A search found a block in another thread's front: from now on inserts note their owner.
  void want_hints() const noexcept {
    if (!hints_wanted_.load(std::memory_order_relaxed)) hints_wanted_.store(true, std::memory_order_relaxed);
  }
  // Generations are unique over every table and every fork reset: one comparison names both.
  __attribute__((always_inline)) Front* this_thread_front() noexcept {
    if (t_front.generation == generation_.load(std::memory_order_relaxed)) return t_front.front;
    return take_front();
  }
  Front* take_front() noexcept;             // the slow path: a front for the calling thread, or nullptr
  void give_back(Front* front) noexcept;    // the thread exits (or moves to another table): live -> shared
  void insert_elsewhere(std::uintptr_t p, const LiveBlock& block) noexcept;  // the shared table
  EraseResult erase_elsewhere(std::uintptr_t p, LiveBlock* out) noexcept;
  Front* hinted_front(std::uintptr_t p) const noexcept;  // the front the owner hint names, or nullptr
  static bool live_at(const FrontSlot& slot, std::uintptr_t p, LiveBlock* out) noexcept;  // p live there?
  Front* front_at(std::size_t i) const noexcept { return fronts_[i].load(std::memory_order_acquire); }
  template <typename Visit>
  void for_each_live(Visit visit) const;  // the shared table's live blocks, then each front's

  LiveBlockTable shared_;
  // Read on every call (this_thread_front); written only by a fork reset. A new value per table and per
  // reset (from a process-wide count), so a thread's cached front of a destroyed table, or of the
  // parent, never matches.
  alignas(64) std::atomic<std::uint64_t> generation_;
  // Read on every insert into a front; set once, by the first search that found a block in another
  // thread's front (or cleared by a fork reset): on generation_'s line, which nothing else writes.
  mutable std::atomic<bool> hints_wanted_{false};
  alignas(64) std::atomic<std::uint64_t> moves_{0};  // bumped by every move of a front's blocks
  alignas(64) mutable std::atomic<std::uint64_t> searches_{0};
  std::mutex fronts_lock_;                            // taking and giving back fronts
  std::atomic<std::size_t> front_count_{0};
  std::atomic<Front*> fronts_[kMaxFronts] = {};       // made on demand, kept until the table is destroyed
  // In the table itself (64 KiB), not behind a pointer: a load and a test less on every insert.
  std::atomic<std::uint8_t> hints_[kHints] = {};
};

}  // namespace gpushim

#pragma GCC visibility pop
