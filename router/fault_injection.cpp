#include "router/fault_injection.h"

#include <new>

#include "diagnostics/monotonic_clock.h"

namespace gpushim {

bool FaultInjector::should_fail(std::size_t bytes, std::uint64_t now_ns) noexcept {
  if (!spec_.armed) return false;
  if (bytes < spec_.min_bytes) return false;
  if (spec_.after_ns && (now_ns < start_ns_ || now_ns - start_ns_ < spec_.after_ns)) return false;
  const std::uint64_t position = matched_.fetch_add(1, std::memory_order_relaxed) + 1;
  bool fail = true;
  if (spec_.nth) fail = position == spec_.nth;
  else if (spec_.every) fail = position % spec_.every == 0;
  if (fail) injected_.fetch_add(1, std::memory_order_relaxed);
  return fail;
}

namespace router {

bool g_fault_armed = false;

namespace {
// Made once by arm_fault_injection() before g_fault_armed is set; never destroyed: program threads may
// still allocate while static destructors run.
FaultInjector* g_injector = nullptr;
}  // namespace

void arm_fault_injection(const FaultSpec& spec) noexcept {
  if (!spec.armed || g_injector) return;
  g_injector = new (std::nothrow) FaultInjector(spec, monotonic_ns());
  g_fault_armed = g_injector != nullptr;
}

bool inject_failure(std::size_t bytes) noexcept { return g_injector && g_injector->should_fail(bytes, monotonic_ns()); }

std::uint64_t injected_failures() noexcept { return g_injector ? g_injector->injected() : 0; }

}  // namespace router
}  // namespace gpushim
