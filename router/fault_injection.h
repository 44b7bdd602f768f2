// GPUSHIM_FAIL at run time: decides, per allocation, whether to fail it on purpose. The decision
// (FaultInjector) is pure and tested on the CPU (tests/router_fault_injection_test.cpp); the router
// asks the process-wide one through inject_failure(), behind one predictable branch on a flag that is
// false unless GPUSHIM_FAIL is set.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "config/fault_spec.h"

namespace gpushim {

class FaultInjector {
 public:
  FaultInjector() = default;
  FaultInjector(const FaultSpec& spec, std::uint64_t start_ns) noexcept : spec_(spec), start_ns_(start_ns) {}
  // Counts the allocation when it matches size>= and after=; true when nth/every pick it (or when
  // neither is given). Thread-safe: concurrent callers each get a distinct position in the count.
  bool should_fail(std::size_t bytes, std::uint64_t now_ns) noexcept;
  std::uint64_t matched() const noexcept { return matched_.load(std::memory_order_relaxed); }
  std::uint64_t injected() const noexcept { return injected_.load(std::memory_order_relaxed); }

 private:
  FaultSpec spec_;
  std::uint64_t start_ns_ = 0;
  std::atomic<std::uint64_t> matched_{0};
  std::atomic<std::uint64_t> injected_{0};
};

namespace router {

extern bool g_fault_armed;  // set once at start, before any allocation; read on every allocation

// Arms the process-wide injector from GPUSHIM_FAIL (router start).
void arm_fault_injection(const FaultSpec& spec) noexcept;
// True when this allocation must fail. Cold: only reached while g_fault_armed.
bool inject_failure(std::size_t bytes) noexcept;
// Failures injected so far (for the exit statistics).
std::uint64_t injected_failures() noexcept;

__attribute__((always_inline)) inline bool fault_injection_armed() noexcept {
  return __builtin_expect(g_fault_armed, 0);
}

}  // namespace router
}  // namespace gpushim
