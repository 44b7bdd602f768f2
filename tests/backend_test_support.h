// Shared checks for the backend tests: a reference model of live blocks that catches overlap and
// misalignment, with probes of the block pattern (tests/block_pattern.h) that catch a block handed out
// twice; random sequences over it, alone or from many threads; and a churn from many threads that
// writes every byte of every block.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "allocators/allocator.h"
#include "tests/block_pattern.h"

namespace gpushim::testing {

// Log-uniform sizes from 1 B to max_bytes: most requests small, some huge, like a training step.
inline std::size_t random_size(std::mt19937_64& rng, std::size_t max_bytes) {
  std::uniform_real_distribution<double> exponent(0.0, std::log2(static_cast<double>(max_bytes)));
  return std::max<std::size_t>(1, static_cast<std::size_t>(std::exp2(exponent(rng))));
}

// What cudaMalloc's blocks meet on the H100 and H200 (CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT), and what
// cudaCreateTextureObject requires of a linear block. A literal, not kMinAlignment: the tests must fail
// if the backends' alignment drops below the hardware's.
inline constexpr std::size_t kTextureAlignment = 512;

// Live blocks by address, with the checks every allocation and free must pass.
class BlockModel {
 public:
  struct Block {
    std::size_t bytes;
    std::uint64_t seed;
  };

  // kProbes by default, so blocks of hundreds of MiB stay cheap; kEveryByte where blocks are small
  // enough to also catch a stray write into the middle of one.
  explicit BlockModel(PatternCoverage coverage = PatternCoverage::kProbes) : coverage_(coverage) {}

  // Records a new block; fails the test on misalignment or overlap with a live block.
  void add(void* p, std::size_t bytes, std::uint64_t seed) {
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    ASSERT_EQ(address % kTextureAlignment, 0u) << "block of " << bytes << " B not " << kTextureAlignment
                                                << "-byte aligned: no texture object over it";
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
    fill_block(p, bytes, seed, coverage_);
  }

  // Removes a block after checking that nobody wrote into it.
  Block remove(std::uintptr_t address) {
    auto it = live_.find(address);
    Block block = it->second;
    EXPECT_TRUE(verify_block(reinterpret_cast<void*>(address), block.bytes, block.seed, coverage_))
        << "block of " << block.bytes << " B was overwritten while live";
    live_.erase(it);
    bytes_ -= block.bytes;
    return block;
  }

  // remove(), then gives the block back to `allocator`.
  Block deallocate(Allocator& allocator, std::uintptr_t address) {
    const Block block = remove(address);
    allocator.deallocate(reinterpret_cast<void*>(address), block.bytes, 0);
    return block;
  }

  // Checks and gives back every live block, lowest address first.
  void deallocate_all(Allocator& allocator) {
    while (!live_.empty()) deallocate(allocator, live_.begin()->first);
  }

  // The address of a live block drawn uniformly by `rng`; the model must not be empty.
  std::uintptr_t random_live(std::mt19937_64& rng) const {
    return std::next(live_.begin(), static_cast<std::ptrdiff_t>(rng() % live_.size()))->first;
  }

  std::size_t size() const { return live_.size(); }
  std::size_t bytes() const { return bytes_; }
  const std::map<std::uintptr_t, Block>& live() const { return live_; }

 private:
  PatternCoverage coverage_;
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
      model.deallocate(allocator, address);
    }
  }
  if (sole_user) {
    EXPECT_EQ(allocator.stats().bytes_in_use, model.bytes());
  }
  for (std::uintptr_t address : order) model.deallocate(allocator, address);
  return failures;
}

// `threads` threads each run run_random_sequence on the same allocator (seeds first_seed,
// first_seed + 1, ...); afterwards every block must have come back.
inline void run_random_sequences_in_threads(Allocator& allocator, int threads, std::size_t steps,
                                            std::size_t max_bytes, std::uint64_t first_seed) {
  std::vector<std::thread> running;
  for (int t = 0; t < threads; ++t)
    running.emplace_back([&, t] { run_random_sequence(allocator, steps, max_bytes, first_seed + t, false); });
  for (auto& thread : running) thread.join();
  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.allocations, s.deallocations);
}

// A churn of allocations and frees from several threads at once, each thread holding a few blocks
// filled in every byte (blocks stay small, so writing all of them is cheap).
struct ThreadChurn {
  int threads = 8;
  int operations_per_thread = 0;
  std::size_t max_blocks_per_thread = 0;
  std::size_t large_bytes = 0;  // one request in 8 is up to this many bytes, the rest up to 16 KiB
  std::uint64_t first_seed = 0;
};

struct ChurnOutcome {
  int corrupted = 0;  // blocks misaligned or overwritten while live
  int failures = 0;   // allocations that returned null
};

// Runs `churn` with `allocate` (the allocator's own, or one with a retry policy) and allocator's
// deallocate; every block is verified before it is freed, and all are freed at the end.
inline ChurnOutcome churn_in_threads(Allocator& allocator, const ThreadChurn& churn,
                                     const std::function<void*(std::size_t)>& allocate) {
  constexpr std::size_t kSmallBytes = 16 * 1024;
  std::atomic<int> corrupted{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < churn.threads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(churn.first_seed + t);
      std::vector<std::tuple<void*, std::size_t, std::uint64_t>> mine;
      std::uint64_t tag = std::uint64_t(t) << 40;  // tags unique across threads
      for (int op = 0; op < churn.operations_per_thread; ++op) {
        if (!mine.empty() && (rng() % 2 || mine.size() > churn.max_blocks_per_thread)) {
          std::size_t i = rng() % mine.size();
          auto [p, n, tg] = mine[i];
          if (!verify_block(p, n, tg)) ++corrupted;
          allocator.deallocate(p, n, 0);
          mine[i] = mine.back();
          mine.pop_back();
        } else {
          std::size_t n = 1 + rng() % (rng() % 8 ? kSmallBytes : churn.large_bytes);
          void* p = allocate(n);
          if (!p) {
            ++failures;
            continue;
          }
          if (reinterpret_cast<std::uintptr_t>(p) % kTextureAlignment) ++corrupted;
          fill_block(p, n, ++tag);
          mine.emplace_back(p, n, tag);
        }
      }
      for (auto [p, n, tg] : mine) {
        if (!verify_block(p, n, tg)) ++corrupted;
        allocator.deallocate(p, n, 0);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  return {corrupted.load(), failures.load()};
}

}  // namespace gpushim::testing
