// The "gpushim" NVTX domain both annotation files use (internal to annotations/).
#pragma once

#include <nvtx3/nvToolsExt.h>

namespace gpushim::annotations::detail {

// nullptr when no NVTX tool is attached (NVTX's own answer, asked once; later calls are one load).
nvtxDomainHandle_t domain() noexcept;

}  // namespace gpushim::annotations::detail
