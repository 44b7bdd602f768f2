// Which backend served a block, as stored in traces and named by the backend registry. Its own header so
// that allocators/ and providers/ can name a backend without including the recorder.
#pragma once

#include <cstdint>

namespace gpushim::tracing {

// Append only: old traces keep their meaning.
enum class BackendId : std::uint8_t {
  passthrough = 0, vmm = 1, buddy = 2, slab = 3, mempool = 4, tiered = 5, unknown = 255,
};

}  // namespace gpushim::tracing
