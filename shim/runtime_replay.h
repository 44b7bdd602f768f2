// An answer gpushim already gave, handed to the CUDA runtime (shim/runtime_entry_points.cpp). A
// cudaMalloc, cudaFree, cudaMallocAsync or cudaFreeAsync served without the runtime that the router
// answered with an error is passed on to the runtime, so that the runtime maps the error to its own code
// and records it for cudaGetLastError. While that call runs on this thread, its one driver call of the
// same kind (cuMemAlloc, cuMemFree, cuMemAllocAsync, cuMemFreeAsync, or their _ptsz forms) and the same
// size or pointer returns the recorded answer instead of asking the router again: a second attempt would
// report an out-of-memory twice and count twice against GPUSHIM_FAIL.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "diagnostics/hot_tls.h"

namespace gpushim::shim {

enum class ReplayedCall : unsigned char { none, allocate, free, allocate_async, free_async };

struct RuntimeReplay {
  ReplayedCall call = ReplayedCall::none;
  std::uintptr_t key = 0;  // the size asked (an allocation) or the pointer freed (a free)
  CUresult answer = CUDA_SUCCESS;
};

// Inline with its constant initializer in every translation unit (as router/thread_state.h's t_state):
// an extern thread_local made each reader call a TLS init check (_ZTH...) first, in cuMemAlloc_v2 too.
inline GPUSHIM_HOT_TLS RuntimeReplay t_runtime_replay{};

// In the driver's allocate and free entry points: one thread-local load in the common case (nothing to
// replay).
__attribute__((always_inline)) inline bool take_replayed_answer(ReplayedCall call, std::uintptr_t key,
                                                                CUresult* answer) noexcept {
  RuntimeReplay& replay = t_runtime_replay;
  if (__builtin_expect(replay.call == ReplayedCall::none, 1)) return false;
  if (replay.call != call || replay.key != key) return false;
  replay.call = ReplayedCall::none;  // one call: the runtime asks once
  *answer = replay.answer;
  return true;
}

}  // namespace gpushim::shim
