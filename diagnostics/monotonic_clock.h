#pragma once

// The library's one clock for its own timing: waits, the decay of recent waits, fault injection's
// windows, the arena's release delay, trace events' stamps and the out-of-memory report's times, so a
// time taken anywhere compares with a trace's. CLOCK_MONOTONIC in ns; clock_gettime is a vDSO call: no
// system call. The arena, the router, the fault injector and the trace recorder each had a copy.
//
// Kept here, below router/, tracing/ and allocators/, so every layer reads the same clock.
#include <time.h>

#include <cstdint>

namespace gpushim {

inline std::uint64_t monotonic_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace gpushim
