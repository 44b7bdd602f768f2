// The alignment gpushim's blocks must have on a device: what the driver's own cudaMalloc gives there,
// the device's texture alignment (CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT), so that texture and surface
// objects work over any block. Apart from the driver, so it is tested on the CPU.
#pragma once

#include <cstddef>

#include "allocators/allocator.h"

namespace gpushim {

// The H100's and H200's texture alignment, used only when the driver cannot tell.
inline constexpr std::size_t kTextureAlignmentFallback = 512;

inline std::size_t texture_alignment(int texture_alignment_attribute) noexcept {
  return texture_alignment_attribute > 0 ? static_cast<std::size_t>(texture_alignment_attribute)
                                         : kTextureAlignmentFallback;
}

// True when blocks aligned to kMinAlignment (every provider backend's) are aligned to `alignment` too.
// A device that asks for more is served by passthrough, whose blocks the driver aligns itself.
inline bool provider_blocks_meet(std::size_t alignment) noexcept {
  return alignment != 0 && kMinAlignment % alignment == 0;
}

}  // namespace gpushim
