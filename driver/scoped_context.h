// Makes a context current for a scope if it is not already, and restores the caller's afterwards.
// cuCtxGetCurrent is a thread-local read inside the driver, so the common case (already current) costs
// no context switch. Used where gpushim records events or queues waits on a stream of a context the
// calling thread may not have current (free fences, stream joins and probes).
#pragma once

#include <cuda.h>

#include "driver/real_driver.h"

namespace gpushim {

class ScopedContext {
 public:
  // ok() is false for a null context, or when it cannot be made current.
  explicit ScopedContext(CUcontext context) noexcept {
    const RealDriver& driver = real_driver();
    CUcontext current = nullptr;
    if (!context || driver.cuCtxGetCurrent(&current) != CUDA_SUCCESS) return;
    ok_ = current == context || (pushed_ = driver.cuCtxPushCurrent(context) == CUDA_SUCCESS);
  }
  ~ScopedContext() {
    CUcontext popped = nullptr;
    if (pushed_) real_driver().cuCtxPopCurrent(&popped);
  }
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;
  bool ok() const noexcept { return ok_; }

 private:
  bool ok_ = false;
  bool pushed_ = false;
};

}  // namespace gpushim
