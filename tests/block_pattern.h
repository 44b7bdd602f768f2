// Proof of no overlap by writing memory: every live block is filled with a pattern derived from its
// own tag, and verified before it is freed. Two blocks that share a byte cannot both verify.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gpushim::testing {

inline void fill_block(void* p, std::size_t bytes, std::uint64_t tag) {
  auto* bytes_ptr = static_cast<unsigned char*>(p);
  std::size_t words = bytes / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t v = tag * 0x9E3779B97F4A7C15ull + i;
    std::memcpy(bytes_ptr + i * 8, &v, 8);
  }
  for (std::size_t i = words * 8; i < bytes; ++i) bytes_ptr[i] = static_cast<unsigned char>(tag + i);
}

inline bool verify_block(const void* p, std::size_t bytes, std::uint64_t tag) {
  auto* bytes_ptr = static_cast<const unsigned char*>(p);
  std::size_t words = bytes / 8;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t v;
    std::memcpy(&v, bytes_ptr + i * 8, 8);
    if (v != tag * 0x9E3779B97F4A7C15ull + i) return false;
  }
  for (std::size_t i = words * 8; i < bytes; ++i)
    if (bytes_ptr[i] != static_cast<unsigned char>(tag + i)) return false;
  return true;
}

}  // namespace gpushim::testing
