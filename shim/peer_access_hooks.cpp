// cuCtxEnablePeerAccess / cuCtxDisablePeerAccess / cuMemPoolSetAccess (what cudaDeviceEnablePeerAccess,
// cudaDeviceDisablePeerAccess and cudaMemPoolSetAccess reach): the real call first, then, when it
// succeeded, the router gives the peer the same access to gpushim's memory (router/peer_access.h).
// Exported through shim/exports.map; rows in driver_substitutions.cpp.
#include <cuda.h>

#include "driver/real_driver.h"
#include "router/peer_access.h"

#define GPUSHIM_EXPORT __attribute__((visibility("default")))

extern "C" {
GPUSHIM_EXPORT CUresult CUDAAPI cuCtxEnablePeerAccess(CUcontext peer_context, unsigned int flags);
GPUSHIM_EXPORT CUresult CUDAAPI cuCtxDisablePeerAccess(CUcontext peer_context);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* map, size_t count);
}

namespace router = gpushim::router;
using gpushim::real_driver;

extern "C" {

CUresult CUDAAPI cuCtxEnablePeerAccess(CUcontext peer_context, unsigned int flags) {
  const auto real = real_driver().cuCtxEnablePeerAccess;
  if (real == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult rc = real(peer_context, flags);
  // Already enabled natively says nothing of gpushim's memory (the grant may predate a fork, or have
  // been refused): asking again is idempotent.
  if (rc == CUDA_SUCCESS || rc == CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) router::on_peer_access_enabled(peer_context);
  return rc;
}

CUresult CUDAAPI cuCtxDisablePeerAccess(CUcontext peer_context) {
  const auto real = real_driver().cuCtxDisablePeerAccess;
  if (real == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult rc = real(peer_context);
  if (rc == CUDA_SUCCESS) router::on_peer_access_disabled(peer_context);
  return rc;
}

CUresult CUDAAPI cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* map, size_t count) {
  const auto real = real_driver().cuMemPoolSetAccess;
  if (real == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult rc = real(pool, map, count);
  if (rc == CUDA_SUCCESS) router::on_pool_access_set(pool, map, count);
  return rc;
}

}  // extern "C"
