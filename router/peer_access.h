// Peer access follows the program (providers/device_access.h says why it must be told): the shim
// forwards each successful cuCtxEnablePeerAccess, cuCtxDisablePeerAccess and cuMemPoolSetAccess here,
// and the owning device's backend is given (or loses) access for the peer over all its memory. A grant
// made before the owner's backend exists is applied when it is built (device_state.cpp).
#pragma once

#include <cuda.h>

#include <cstddef>

#include "providers/device_access.h"

namespace gpushim::router {

// The calling thread's current context now reaches (or no longer reaches) `peer_context`'s memory.
void on_peer_access_enabled(CUcontext peer_context) noexcept;
void on_peer_access_disabled(CUcontext peer_context) noexcept;
// cuMemPoolSetAccess(pool, map, count) succeeded. When `pool` is a device's default or current pool,
// the devices `map` names get (or lose) access to every block gpushim serves on that device: its
// cuMemAllocAsync blocks come from the same memory as its cuMemAlloc ones, so access covers both.
void on_pool_access_set(CUmemoryPool pool, const CUmemAccessDesc* map, std::size_t count) noexcept;

// Applies the grants recorded so far for device `owner` to its newly built backend's `access`.
void apply_access_grants(int owner, DeviceAccess& access) noexcept;

}  // namespace gpushim::router
