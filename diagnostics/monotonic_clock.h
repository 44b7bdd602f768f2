#pragma once

// The library's one clock for its own timing: waits, the decay of recent waits, fault injection's
// windows, the out-of-memory report's times. CLOCK_MONOTONIC in ns, as trace events are stamped
// (tracing/trace_recorder.cpp), so a time taken here compares with a trace's. clock_gettime is a vDSO
// call: no system call. The arena, the router and the fault injector each had a copy of their own.
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
