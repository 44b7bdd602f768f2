// The call stacks of live blocks, kept for GPUSHIM_OOM_DUMP_STACK so an out-of-memory dump can say
// which code holds the memory. Interned: a program allocates from a few thousand call sites, so each
// distinct stack is stored once and a live block keeps only its 32-bit id (LiveBlock::stack).
//
// Lock-free, fixed size, allocated once when the setting asks for it: interning runs on every
// allocation while stacks are on, from every thread, and the dump reads it at the moment of an
// out-of-memory failure, when taking more host memory or a lock another thread holds is the wrong move.
// When the store is full, new stacks get id 0 (no stack) instead of growing it.
// Pure C++: tested on the CPU in tests/router_oom_dump_state_test.cpp.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace gpushim {

class StackStore {
 public:
  // Distinct stacks kept. At 16 frames, 32768 stacks take 4 MiB of frames, touched only as filled.
  static constexpr std::uint32_t kCapacity = 1u << 15;

  // Allocates room for kCapacity stacks of up to `depth` frames. False without memory (stacks stay off).
  bool init(int depth) noexcept;
  bool ready() const noexcept { return depth_ > 0; }
  int depth() const noexcept { return depth_; }

  // The id of this stack (from 1); 0 when the store is full, not initialised, or count is 0.
  std::uint32_t intern(const std::uint64_t* frames, int count) noexcept;
  // The frames of `id`, innermost first; 0 for id 0 or an id not (yet) stored.
  int frames_of(std::uint32_t id, const std::uint64_t** frames) const noexcept;

 private:
  enum : std::uint32_t { kEmpty = 0, kWriting = 1, kReady = 2 };
  // Slots looked at before giving up on one stack: keeps intern() bounded when the store fills.
  static constexpr std::uint32_t kMaxProbes = 64;
  struct Entry {
    std::atomic<std::uint32_t> state{kEmpty};
    std::uint32_t count = 0;
    std::uint64_t hash = 0;
  };
  Entry* entries_ = nullptr;
  std::uint64_t* frames_ = nullptr;  // kCapacity * depth_
  int depth_ = 0;
};

}  // namespace gpushim
