// GPUSHIM_FAIL: which allocations gpushim fails on purpose, to test a program's recovery path.
// Parsed here with the other settings; applied by the router (router/fault_injection.h).
//
// Syntax: conditions separated by commas, all of which must hold.
//   size>=S   only allocations of at least S bytes match (S as GPUSHIM_LIMIT writes sizes: 1GiB, 64k)
//   after=T   only allocations made T after gpushim started match (T: 500ms, 2s, 1.5s, 100us, 3m)
//   nth=N     of the matching allocations, fail the Nth only (counted from 1)
//   every=N   of the matching allocations, fail every Nth (N, 2N, 3N, ...)
// With neither nth nor every, every matching allocation fails. nth and every exclude each other.
// Examples: "nth=5", "every=100", "size>=1GiB", "size>=256MiB,nth=2", "after=10s,every=50".
#pragma once

#include <cstdint>

namespace gpushim {

struct FaultSpec {
  bool armed = false;            // a valid, non-empty GPUSHIM_FAIL was given
  std::uint64_t nth = 0;         // 0: not given
  std::uint64_t every = 0;       // 0: not given
  std::uint64_t min_bytes = 0;   // size>=
  std::uint64_t after_ns = 0;    // after=
};

// False (and *out untouched) on anything outside the syntax above.
bool parse_fault_spec(const char* text, FaultSpec* out);

}  // namespace gpushim
