// cuMemAllocPitch's arithmetic, apart from the driver so it is tested on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gpushim {

// cuMemAllocPitch on the H100 returns pitches that are multiples of 512 bytes, although
// CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT reports 32 there: the driver pads rows to 512 for its
// own reasons (coalescing of 2D copies). Programs compare against what the real call returned, so we
// use max(attribute, 512).
inline constexpr std::size_t kMinPitchAlignment = 512;

inline std::size_t pitch_alignment(int texture_pitch_alignment_attribute) noexcept {
  std::size_t attribute = texture_pitch_alignment_attribute > 0
                              ? static_cast<std::size_t>(texture_pitch_alignment_attribute) : 0;
  return attribute > kMinPitchAlignment ? attribute : kMinPitchAlignment;
}

// What the driver validates: element size 4, 8 or 16 (it only uses it to choose the alignment), and a
// non-empty rectangle. Returns false for CUDA_ERROR_INVALID_VALUE.
inline bool valid_pitch_request(std::size_t width_bytes, std::size_t height, unsigned element_size) noexcept {
  if (element_size != 4 && element_size != 8 && element_size != 16) return false;
  return width_bytes != 0 && height != 0;
}

// Rounds the row up to the alignment (a power of two, or any positive value). Returns false on
// overflow of pitch * height.
inline bool pitched_size(std::size_t width_bytes, std::size_t height, std::size_t alignment,
                         std::size_t* pitch, std::size_t* total) noexcept {
  if (alignment == 0 || width_bytes > SIZE_MAX - (alignment - 1)) return false;
  std::size_t row = (width_bytes + alignment - 1) / alignment * alignment;
  if (height != 0 && row > SIZE_MAX / height) return false;
  *pitch = row;
  *total = row * height;
  return true;
}

}  // namespace gpushim
