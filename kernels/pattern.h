// The byte pattern every test block carries, shared by the host (reference, CPU checks) and the device.
// A block is tagged with a 32-bit value (unique per allocation in a run); word i of the block holds
// pattern_word(tag, i). Two blocks with different tags differ in almost every word, so a block that
// another allocation overwrote is caught by counting mismatches, not by luck.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GPUSHIM_HOST_DEVICE __host__ __device__
#else
#define GPUSHIM_HOST_DEVICE
#endif

namespace gpushim::kernels {

// The finalizer of MurmurHash3 (fmix32): cheap, and a change in one input bit flips about half the output
// bits, so neighbouring words and neighbouring tags never collide in a regular way.
GPUSHIM_HOST_DEVICE inline std::uint32_t pattern_word(std::uint32_t tag, std::uint64_t word_index) {
  std::uint32_t h = tag * 0x9E3779B1u ^ static_cast<std::uint32_t>(word_index) ^
                    static_cast<std::uint32_t>(word_index >> 32) * 0x85EBCA77u;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Byte `offset` of a block tagged `tag` (little-endian bytes of the word that covers it). Blocks whose
// size is not a multiple of 4 end in a tail that is written and checked byte by byte with this.
GPUSHIM_HOST_DEVICE inline std::uint8_t pattern_byte(std::uint32_t tag, std::uint64_t offset) {
  return static_cast<std::uint8_t>(pattern_word(tag, offset / 4) >> (8 * (offset % 4)));
}

}  // namespace gpushim::kernels
