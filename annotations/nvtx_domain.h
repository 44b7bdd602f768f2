// The "gpushim" NVTX domain both annotation files use (internal to annotations/).
#pragma once

#include <nvtx3/nvToolsExt.h>

namespace gpushim::annotations::detail {

// nullptr when no tool took NVTX's core API (asked once; later calls are one load). Gates the ranges
// only: a tool may serve the memory extension alone (the memory calls then pass a null domain, which
// compute-sanitizer ignores anyway), so nvtx_memory.cpp asks the extension itself.
nvtxDomainHandle_t domain() noexcept;

}  // namespace gpushim::annotations::detail
