// Which other devices may read and write the memory a backend serves. Natively, once a program calls
// cuCtxEnablePeerAccess (cudaDeviceEnablePeerAccess), every cuMemAlloc allocation of the peer, made
// before or after, is reachable from the current device; cuMemPoolSetAccess does the same for a pool's
// blocks. Memory gpushim maps itself (VMM ranges, its own pools) is reachable only from the devices its
// access list names, so the router forwards the program's grants here (router/peer_access.h).
// Implemented by the CUDA provider (cuMemSetAccess over every mapping) and the mempool backend
// (cuMemPoolSetAccess on its pools); passthrough blocks are the driver's own and need nothing.
#pragma once

namespace gpushim {

class DeviceAccess {
 public:
  virtual ~DeviceAccess() = default;
  // Read-write access from `device` to every block served, now and later. Idempotent; false when the
  // driver refuses (logged), in which case nothing changed.
  virtual bool grant_access(int device) noexcept = 0;
  // Takes back a grant_access(); devices the backend itself made participants (GPUSHIM_PEERS) and the
  // owning device keep their access.
  virtual void revoke_access(int device) noexcept = 0;
};

}  // namespace gpushim
