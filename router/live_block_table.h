// Which blocks gpushim has handed out: pointer -> (requested size, block size, device, origin).
//
// Every cuMemFree asks this table "is this ours?", so it sits on the hot path of every thread. It is
// sharded by a hash of the pointer, one lock per shard, so threads freeing different blocks almost never
// meet on one lock (no global lock). Each shard is an open-addressing hash table (linear probing) under a
// spin lock: insert and erase are one probe, no node allocation, no tree rebalancing. (It was a
// std::map under a std::mutex per shard, plus a scan of 32 recently-freed entries on every insert:
// ~700 instructions per alloc+free pair, a third of the router's cost, in callgrind of
// bench/router_pair_bench.)
//
// An erased block stays in its slot, marked freed with the number of its shard's erase, so a second free
// of a gpushim block is recognised as a double free of *ours* (and answered with CUDA_ERROR_INVALID_VALUE)
// instead of being handed to the real driver as a stranger. A freed slot is remembered while fewer than
// kRecentlyFreedPerShard erases of its shard have followed it; after that it is a stale marker, which
// answers "unknown", may be taken by the next insert that passes it, and is dropped when the shard is
// rebuilt, so the table never grows with frees; unless its address keeps coming back, as fenced blocks'
// do: then it stays, up to kMaxSlotsKeepingFreed slots a shard (rebuild() says why). (It was a ring of
// the last erases whose oldest entry was looked up and removed on every erase: a second probe and a
// backward shift per free, ~60 Ir a pair.)
// Pure C++ (no CUDA): tested on the CPU in tests/router_live_block_table_test.cpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <vector>

#include "router/spin_lock.h"

namespace gpushim {

struct LiveBlock {
  std::size_t requested = 0;   // what the program asked for
  std::size_t block_size = 0;  // what the backend was asked for (requested rounded up)
  int device = -1;
  bool async_origin = false;   // came from cuMemAllocAsync
  // For the out-of-memory dump (docs/oom-dump.md). The stream costs nothing to keep; the time and the
  // stack id are filled only while GPUSHIM_OOM_DUMP / GPUSHIM_OOM_DUMP_STACK ask for them (0 otherwise).
  std::uint32_t stack = 0;     // StackStore id (router/allocation_stacks.h)
  std::uint64_t stream = 0;    // the stream of cuMemAllocAsync; 0 for cuMemAlloc
  std::uint64_t time_ns = 0;   // CLOCK_MONOTONIC at the allocation
};

class LiveBlockTable {
 public:
  // 64 shards: with 16-32 threads freeing at once, the chance two of them pick the same shard at the
  // same moment is small, and 64 cache-line-padded shard headers cost 4 KiB plus their slots.
  static constexpr std::size_t kShards = 64;
  // Frees remembered per shard: 64 x 32 = 2048 recent frees, enough to catch the usual double free (the
  // same pointer freed twice within a few calls) without a growing structure.
  static constexpr std::size_t kRecentlyFreedPerShard = 32;

  enum class EraseResult {
    erased,          // it was live; *out holds what it was
    double_free,     // not live, but gpushim freed it recently: *out holds what it was
    unknown,         // never ours as far as we remember: belongs to the real driver
  };

  // Inline for the common case, the block in its home slot (a block freed and allocated again at once,
  // or a table with short probe runs); the rest out of line. (Out-of-line calls and a full probe loop
  // for that case were ~30 instructions a pair.)
  void insert(std::uintptr_t p, const LiveBlock& block) noexcept {
    Shard& shard = shards_[shard_of(p)];
    std::lock_guard<SpinLock> guard(shard.lock);
    if (shard.slots) {
      Slot& home = shard.slots[probe_start(p, shard.capacity_mask)];
      if (home.address == p && home.state != SlotState::empty) {
        home.block = block;
        home.state = SlotState::live;
        return;
      }
    }
    insert_locked(shard, p, block);
  }
  EraseResult erase(std::uintptr_t p, LiveBlock* out) noexcept {
    if (p == 0) return EraseResult::unknown;
    Shard& shard = shards_[shard_of(p)];
    std::lock_guard<SpinLock> guard(shard.lock);
    if (shard.slots) {
      Slot& home = shard.slots[probe_start(p, shard.capacity_mask)];
      if (home.address == p && home.state == SlotState::live) {
        *out = home.block;
        mark_freed(shard, home);
        return EraseResult::erased;
      }
    }
    return erase_locked(shard, p, out);
  }
  bool find(std::uintptr_t p, LiveBlock* out) const noexcept;
  // The live block whose [base, base + requested) contains p (interior pointers too). A base pointer is
  // one probe; an interior pointer scans every live block (cold: only range queries and IPC ask).
  bool find_containing(std::uintptr_t p, std::uintptr_t* base, LiveBlock* out) const noexcept;

  struct Entry {
    std::uintptr_t address;
    LiveBlock block;
  };
  // Up to `n` largest live blocks of `device`, largest first (for the out-of-memory report).
  std::vector<Entry> largest(int device, std::size_t n) const;
  // Copies up to `max` live blocks of shard `shard`, starting at its slot `from`, into `out`; `*next` is
  // where to go on (past the shard's end when it is done). One shard lock at a time, held only while
  // copying: the out-of-memory dump walks the table this way with a fixed buffer, while other threads
  // go on allocating (a block moved by them meanwhile may be missed or seen twice).
  std::size_t copy_live(std::size_t shard, std::size_t from, Entry* out, std::size_t max,
                        std::size_t* next) const noexcept;
  // Sum of requested sizes and count of live blocks of `device`.
  void totals(int device, std::uint64_t* bytes, std::uint64_t* count) const noexcept;

  // In a forked child only one thread exists; a lock some other parent thread held is garbage, and the
  // parent's blocks are not the child's: forgets every block and every recent free.
  void reset_after_fork() noexcept;

  // visit(address, block) on every live block, one shard lock at a time (held during the visits).
  template <typename Visit>
  void for_each_live(Visit visit) const {
    for (const Shard& shard : shards_) {
      std::lock_guard<SpinLock> guard(shard.lock);
      if (!shard.slots) continue;
      for (std::size_t i = 0; i <= shard.capacity_mask; ++i)
        if (shard.slots[i].state == SlotState::live) visit(shard.slots[i].address, shard.slots[i].block);
    }
  }

  // Slots allocated over all shards (live, freed and empty): for tests that the table stays bounded.
  std::size_t slot_capacity() const noexcept;
  // Rebuilds over all shards so far: for tests that a working set that cycles stops rebuilding.
  std::uint64_t rebuilds() const noexcept;

  // A shard keeps the freed slots of addresses that come back, up to this many slots (64 B each: 256
  // KiB a shard, 16 MiB for the table at most): rebuild() says why.
  static constexpr std::size_t kMaxSlotsKeepingFreed = 4096;

  static std::size_t shard_of(std::uintptr_t p) noexcept {
    // Blocks are >= 256-byte aligned: drop those bits, then a Fibonacci multiply spreads neighbours.
    return static_cast<std::size_t>(((p >> 8) * 0x9E3779B97F4A7C15ull) >> 58);  // top 6 bits: 0..63
  }

 private:
  static constexpr std::size_t kLostBits = 4096;
  static std::size_t lost_bit(std::uintptr_t p) noexcept {
    // A mix of its own (murmur3's finalizer): bits of the shard's multiplicative hash walk in steps for
    // neighbouring addresses, so new addresses kept landing on the bits of those just dropped.
    std::uint64_t x = p >> 8;
    x = (x ^ (x >> 33)) * 0xff51afd7ed558ccdull;
    x = (x ^ (x >> 33)) * 0xc4ceb9fe1a85ec53ull;
    return static_cast<std::size_t>(x ^ (x >> 33)) & (kLostBits - 1);
  }
  // forgotten: a freed slot known to be stale whatever the count says (set when the count wraps).
  enum class SlotState : std::uint32_t { empty, live, freed, forgotten };
  // One cache line: the key, sizes, device and state are read together.
  struct alignas(64) Slot {
    std::uintptr_t address = 0;
    LiveBlock block;
    SlotState state = SlotState::empty;
    std::uint32_t erase_number = 0;  // which erase of the shard marked it freed
  };
  struct alignas(64) Shard {
    mutable SpinLock lock;
    Slot* slots = nullptr;   // capacity_mask + 1 slots, a power of two; allocated and never shrunk
    std::size_t capacity_mask = 0;
    std::size_t occupied = 0;  // live + freed slots (a freed slot ends no probe run)
    std::uint32_t erase_count = 0;
    // Only inserts that find no slot of their own, and rebuilds, write these.
    std::uint32_t misses = 0;    // inserts since the last rebuild that found no slot of their address
    std::uint32_t returned = 0;  // ... of which the address had lost its slot to a rebuild or a takeover
    std::uint32_t rebuilds = 0;  // for tests (rebuilds())
    std::uint32_t lost_count = 0;  // bits set in `lost`
    // Addresses whose freed slots were dropped or taken over, hashed: kLostBits bits, `returned` counts
    // the misses that hit a set bit (mark_lost says when it is cleared). Allocated at the first loss and
    // kept (512 bytes); nullptr: none yet, or no host memory (then nothing counts as returned).
    std::uint64_t* lost = nullptr;
  };
  static_assert(sizeof(Shard) == 64, "a shard's header is one cache line");
  // A freed slot still counts as a double-free marker (unsigned difference: wraps with the count).
  static bool remembered(const Shard& shard, const Slot& slot) noexcept {
    return slot.state == SlotState::freed && shard.erase_count - slot.erase_number < kRecentlyFreedPerShard;
  }
  static std::size_t probe_start(std::uintptr_t p, std::size_t mask) noexcept {
    // Bits below the 6 that chose the shard, from the same multiplicative hash.
    return static_cast<std::size_t>(((p >> 8) * 0x9E3779B97F4A7C15ull) >> 20) & mask;
  }
  static Slot* find_slot(const Shard& shard, std::uintptr_t p) noexcept;  // lock held; nullptr if absent
  static void insert_locked(Shard& shard, std::uintptr_t p, const LiveBlock& block) noexcept;
  static EraseResult erase_locked(Shard& shard, std::uintptr_t p, LiveBlock* out) noexcept;
  static void mark_freed(Shard& shard, Slot& slot) noexcept {  // lock held
    slot.state = SlotState::freed;
    slot.erase_number = ++shard.erase_count;
    if ((shard.erase_count & 0x7fffffffu) == 0) forget_stale(shard);
  }
  static void mark_lost(Shard& shard, std::uintptr_t address) noexcept {  // lock held
    if (!shard.lost && !(shard.lost = new (std::nothrow) std::uint64_t[kLostBits / 64]())) return;
    std::uint64_t& word = shard.lost[lost_bit(address) / 64];
    const std::uint64_t bit = std::uint64_t{1} << (lost_bit(address) % 64);
    if (word & bit) return;
    // Kept across rebuilds (an address comes back after several), and cleared once a quarter is set, so
    // that addresses that never come back hit a set bit at most a quarter of the time.
    if (++shard.lost_count > kLostBits / 4) {
      std::fill(shard.lost, shard.lost + kLostBits / 64, 0);
      shard.lost_count = 1;
    }
    word |= bit;
  }
  static bool was_lost(const Shard& shard, std::uintptr_t address) noexcept {
    return shard.lost && (shard.lost[lost_bit(address) / 64] >> (lost_bit(address) % 64) & 1);
  }
  // The count wraps after 2^32 erases, and a slot freed that long before would look recent again: every
  // 2^31 erases, stale freed slots are marked forgotten, so none is still merely freed by then.
  static void forget_stale(Shard& shard) noexcept;
  // Lock held: rebuilds the shard, doubling it while that leaves it more than a quarter full. Stale freed
  // slots are dropped, unless most inserts since the last rebuild were addresses that had lost theirs
  // (then they stay, up to kMaxSlotsKeepingFreed slots). False when no host memory was left.
  static bool rebuild(Shard& shard) noexcept;

  static_assert(kShards == 64, "shard_of() takes the top 6 bits");
  static_assert(sizeof(Slot) == 64, "a slot is one cache line");
  Shard shards_[kShards];
};

// The cold queries over a set of live blocks, for any `for_each_live(visit)` that calls
// visit(address, block) on each (under a lock: the visits neither allocate nor throw): the shared
// table's, and with the threads' fronts, router/live_blocks.h's.
namespace live_block_queries {

// The live block whose [address, address + requested) holds the interior pointer `p`. Blocks do not
// overlap, so at most one does.
template <typename ForEachLive>
bool containing(ForEachLive for_each_live, std::uintptr_t p, std::uintptr_t* base, LiveBlock* out) {
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

// Up to `n` largest live blocks of `device`, largest first.
template <typename ForEachLive>
std::vector<LiveBlockTable::Entry> largest(ForEachLive for_each_live, int device, std::size_t n) {
  using Entry = LiveBlockTable::Entry;
  std::vector<Entry> top;
  if (n == 0) return top;
  auto larger = [](const Entry& a, const Entry& b) { return a.block.requested > b.block.requested; };
  top.reserve(n + 1);  // the visits must not allocate while a lock is held
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

// Sum of requested sizes and count of the live blocks of `device`.
template <typename ForEachLive>
void totals(ForEachLive for_each_live, int device, std::uint64_t* bytes, std::uint64_t* count) {
  *bytes = 0;
  *count = 0;
  for_each_live([&](std::uintptr_t, const LiveBlock& block) {
    if (block.device != device) return;
    *bytes += block.requested;
    ++*count;
  });
}

}  // namespace live_block_queries

}  // namespace gpushim
