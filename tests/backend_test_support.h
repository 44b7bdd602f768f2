// Shared checks for the buddy, slab and tiered backend tests: a reference model of live blocks that
// catches overlap and misalignment, and byte patterns written into every block that catch a block
// handed out twice (the second owner's pattern overwrites the first's).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "allocators/allocator.h"

namespace gpushim::testing {

// Writing all of a 100 MiB block would dominate the test time; 16 bytes per 4 KiB plus the last 16
// still catch a block handed out twice (both owners then share its first bytes).
inline constexpr std::size_t kPatternStride = 4096;

// The byte at each offset depends only on (seed, offset), so probes that overlap agree.
inline unsigned char pattern_byte(std::uint64_t seed, std::size_t offset) {
  const std::uint64_t x = (seed * 0x9E3779B97F4A7C15ull) ^ (offset * 0xC2B2AE3D27D4EB4Full);
  return static_cast<unsigned char>(x >> 56);
}

inline constexpr std::size_t kProbeBytes = 16;

// Probes of kProbeBytes every kPatternStride, plus the last bytes of the block.
inline void for_each_probe_byte(std::size_t bytes, const std::function<void(std::size_t)>& visit) {
  for (std::size_t off = 0; off < bytes; off += kPatternStride)
    for (std::size_t i = off; i < std::min(bytes, off + kProbeBytes); ++i) visit(i);
  for (std::size_t i = bytes > kProbeBytes ? bytes - kProbeBytes : 0; i < bytes; ++i) visit(i);
}

inline void fill_pattern(void* p, std::size_t bytes, std::uint64_t seed) {
  auto* base = static_cast<unsigned char*>(p);
  for_each_probe_byte(bytes, [&](std::size_t off) { base[off] = pattern_byte(seed, off); });
}

inline bool pattern_intact(const void* p, std::size_t bytes, std::uint64_t seed) {
  auto* base = static_cast<const unsigned char*>(p);
  bool ok = true;
  for_each_probe_byte(bytes, [&](std::size_t off) { ok = ok && base[off] == pattern_byte(seed, off); });
  return ok;
}

// Log-uniform sizes from 1 B to max_bytes: most requests small, some huge, like a training step.
inline std::size_t random_size(std::mt19937_64& rng, std::size_t max_bytes) {
  std::uniform_real_distribution<double> exponent(0.0, std::log2(static_cast<double>(max_bytes)));
  return std::max<std::size_t>(1, static_cast<std::size_t>(std::exp2(exponent(rng))));
}

// Live blocks by address, with the checks every allocation and free must pass.
class BlockModel {
 public:
  struct Block {
    std::size_t bytes;
    std::uint64_t seed;
  };

  // Records a new block; fails the test on misalignment or overlap with a live block.
  void add(void* p, std::size_t bytes, std::uint64_t seed) {
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    ASSERT_EQ(address % kMinAlignment, 0u) << "block of " << bytes << " B not 256-byte aligned";
    auto next = live_.lower_bound(address);
    if (next != live_.end()) {
      ASSERT_LE(address + bytes, next->first) << "overlaps the next live block";
    }
    if (next != live_.begin()) {
      auto prev = std::prev(next);
      ASSERT_LE(prev->first + prev->second.bytes, address) << "overlaps the previous live block";
    }
    live_.emplace(address, Block{bytes, seed});
    bytes_ += bytes;
    fill_pattern(p, bytes, seed);
  }

  // Removes a block after checking that nobody wrote into it.
  Block remove(std::uintptr_t address) {
    auto it = live_.find(address);
    Block block = it->second;
    EXPECT_TRUE(pattern_intact(reinterpret_cast<void*>(address), block.bytes, block.seed))
        << "block of " << block.bytes << " B was overwritten while live";
    live_.erase(it);
    bytes_ -= block.bytes;
    return block;
  }

  std::size_t size() const { return live_.size(); }
  std::size_t bytes() const { return bytes_; }
  const std::map<std::uintptr_t, Block>& live() const { return live_; }

 private:
  std::map<std::uintptr_t, Block> live_;
  std::size_t bytes_ = 0;
};

// Random allocate/free steps (about 60% allocations) checked against the model, then frees everything.
// Returns the number of failed allocations (they are allowed only when the provider has a cap).
// `sole_user`: no other thread uses the allocator, so its bytes_in_use must equal the model's.
inline std::size_t run_random_sequence(Allocator& allocator, std::size_t steps, std::size_t max_bytes,
                                       std::uint64_t seed, bool sole_user = true) {
  std::mt19937_64 rng(seed);
  BlockModel model;
  std::vector<std::uintptr_t> order;  // live addresses, for picking one at random
  std::size_t failures = 0;
  for (std::size_t step = 0; step < steps; ++step) {
    if (order.empty() || rng() % 10 < 6) {
      const std::size_t bytes = random_size(rng, max_bytes);
      void* p = allocator.allocate(bytes, 0);
      if (p == nullptr) {
        ++failures;
        continue;
      }
      model.add(p, bytes, rng());
      if (::testing::Test::HasFatalFailure()) return failures;
      order.push_back(reinterpret_cast<std::uintptr_t>(p));
    } else {
      const std::size_t i = rng() % order.size();
      const std::uintptr_t address = order[i];
      order[i] = order.back();
      order.pop_back();
      const auto block = model.remove(address);
      allocator.deallocate(reinterpret_cast<void*>(address), block.bytes, 0);
    }
  }
  if (sole_user) {
    EXPECT_EQ(allocator.stats().bytes_in_use, model.bytes());
  }
  for (std::uintptr_t address : order) {
    const auto block = model.remove(address);
    allocator.deallocate(reinterpret_cast<void*>(address), block.bytes, 0);
  }
  return failures;
}

}  // namespace gpushim::testing
