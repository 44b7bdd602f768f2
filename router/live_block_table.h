// Which blocks gpushim has handed out: pointer -> (requested size, block size, device, origin).
//
// Every cuMemFree asks this table "is this ours?", so it sits on the hot path of every thread. It is
// sharded by a hash of the pointer, one lock per shard, so threads freeing different blocks almost never
// meet on one lock (no global lock). Each shard also remembers the last few pointers it erased, so a
// second free of a gpushim block is recognised as a double free of *ours* (and answered with
// CUDA_ERROR_INVALID_VALUE) instead of being handed to the real driver as a stranger.
// Pure C++ (no CUDA): tested on the CPU in tests/router_live_block_table_test.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace gpushim {

struct LiveBlock {
  std::size_t requested = 0;   // what the program asked for
  std::size_t block_size = 0;  // what the backend was asked for (requested rounded up)
  int device = -1;
  bool async_origin = false;   // came from cuMemAllocAsync
};

class LiveBlockTable {
 public:
  // 64 shards: with 16-32 threads freeing at once, the chance two of them pick the same shard at the
  // same moment is small, and 64 cache-line-padded mutexes cost 4 KiB.
  static constexpr std::size_t kShards = 64;
  // Pointers remembered per shard after erase: 64 x 32 = 2048 recent frees, enough to catch the usual
  // double free (the same pointer freed twice within a few calls) without a growing structure.
  static constexpr std::size_t kRecentlyFreedPerShard = 32;

  enum class EraseResult {
    erased,          // it was live; *out holds what it was
    double_free,     // not live, but gpushim freed it recently: *out holds what it was
    unknown,         // never ours as far as we remember: belongs to the real driver
  };

  void insert(std::uintptr_t p, const LiveBlock& block) noexcept;
  EraseResult erase(std::uintptr_t p, LiveBlock* out) noexcept;
  bool find(std::uintptr_t p, LiveBlock* out) const noexcept;
  // The live block whose [base, base + requested) contains p (interior pointers too).
  bool find_containing(std::uintptr_t p, std::uintptr_t* base, LiveBlock* out) const noexcept;

  struct Entry {
    std::uintptr_t address;
    LiveBlock block;
  };
  // Up to `n` largest live blocks of `device`, largest first (for the out-of-memory report).
  std::vector<Entry> largest(int device, std::size_t n) const;
  // Sum of requested sizes and count of live blocks of `device`.
  void totals(int device, std::uint64_t* bytes, std::uint64_t* count) const noexcept;

  // In a forked child only one thread exists; a lock some other parent thread held is garbage.
  void reset_after_fork() noexcept;

  static std::size_t shard_of(std::uintptr_t p) noexcept {
    // Blocks are >= 256-byte aligned: drop those bits, then a Fibonacci multiply spreads neighbours.
    return static_cast<std::size_t>(((p >> 8) * 0x9E3779B97F4A7C15ull) >> 58);  // top 6 bits: 0..63
  }

 private:
  struct alignas(64) Shard {
    mutable std::mutex lock;
    std::map<std::uintptr_t, LiveBlock> live;
    Entry recently_freed[kRecentlyFreedPerShard] = {};
    std::size_t next_recent = 0;
  };
  static_assert(kShards == 64, "shard_of() takes the top 6 bits");
  Shard shards_[kShards];
};

}  // namespace gpushim
