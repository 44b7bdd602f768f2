// Proof of no overlap by writing memory: every live block carries a pattern derived from its own tag,
// and is verified before it is freed. Two blocks that share a byte cannot both verify, because the
// second owner's pattern overwrites the first's.
//
// The byte at each offset depends only on (tag, offset), so writing every byte and writing a sample of
// probes are the same pattern, and probes that overlap agree.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gpushim::testing {

// Which bytes of a block carry the pattern.
enum class PatternCoverage {
  // Every byte: also catches a stray write into the middle of a block. Fine for blocks of a few MiB.
  kEveryByte,
  // kProbeBytes every kProbeStride, plus the last kProbeBytes. Writing all of a 100 MiB block would
  // dominate the test time; a block handed out twice still shows, because both owners share its first
  // bytes.
  kProbes,
};

inline constexpr std::size_t kProbeStride = 4096;
inline constexpr std::size_t kProbeBytes = 16;

// Word i of a block tagged `tag`, stored in the host's byte order at offset 8 * i: byte `offset` of a
// block is byte offset % 8 of word offset / 8. The multiplier is odd, so at any one offset two
// different tags always give different words; neighbouring tags differ in most bits (it is the golden
// ratio). Linear in i, so filling vectorises (half the time of hashing each word, on 512 MiB).
inline std::uint64_t pattern_word(std::uint64_t tag, std::size_t word_index) {
  return tag * 0x9E3779B97F4A7C15ull + word_index;
}

// Byte `offset` of a block tagged `tag`.
inline unsigned char pattern_byte(std::uint64_t tag, std::size_t offset) {
  const std::uint64_t word = pattern_word(tag, offset / 8);
  unsigned char word_bytes[8];
  std::memcpy(word_bytes, &word, 8);
  return word_bytes[offset % 8];
}

// Calls visit(begin, end) for each byte range of a `bytes`-long block that `coverage` covers.
template <typename Visit>
void for_each_covered_range(std::size_t bytes, PatternCoverage coverage, Visit&& visit) {
  if (coverage == PatternCoverage::kEveryByte) {
    visit(std::size_t{0}, bytes);
    return;
  }
  for (std::size_t off = 0; off < bytes; off += kProbeStride) visit(off, std::min(bytes, off + kProbeBytes));
  visit(bytes > kProbeBytes ? bytes - kProbeBytes : 0, bytes);
}

// Bytes [begin, end) of a block: whole words at a time, single bytes only where a range starts or
// ends inside a word.
inline void fill_range(unsigned char* base, std::size_t begin, std::size_t end, std::uint64_t tag) {
  std::size_t i = begin;
  for (; i < end && i % 8 != 0; ++i) base[i] = pattern_byte(tag, i);
  for (; i + 8 <= end; i += 8) {
    const std::uint64_t word = pattern_word(tag, i / 8);
    std::memcpy(base + i, &word, 8);
  }
  for (; i < end; ++i) base[i] = pattern_byte(tag, i);
}

inline bool range_intact(const unsigned char* base, std::size_t begin, std::size_t end, std::uint64_t tag) {
  std::size_t i = begin;
  for (; i < end && i % 8 != 0; ++i)
    if (base[i] != pattern_byte(tag, i)) return false;
  for (; i + 8 <= end; i += 8) {
    std::uint64_t word;
    std::memcpy(&word, base + i, 8);
    if (word != pattern_word(tag, i / 8)) return false;
  }
  for (; i < end; ++i)
    if (base[i] != pattern_byte(tag, i)) return false;
  return true;
}

inline void fill_block(void* p, std::size_t bytes, std::uint64_t tag,
                       PatternCoverage coverage = PatternCoverage::kEveryByte) {
  auto* base = static_cast<unsigned char*>(p);
  for_each_covered_range(bytes, coverage,
                         [&](std::size_t begin, std::size_t end) { fill_range(base, begin, end, tag); });
}

// True if every covered byte still holds what fill_block wrote with the same tag and coverage.
inline bool verify_block(const void* p, std::size_t bytes, std::uint64_t tag,
                         PatternCoverage coverage = PatternCoverage::kEveryByte) {
  auto* base = static_cast<const unsigned char*>(p);
  bool intact = true;
  for_each_covered_range(bytes, coverage, [&](std::size_t begin, std::size_t end) {
    intact = intact && range_intact(base, begin, end, tag);
  });
  return intact;
}

}  // namespace gpushim::testing
