// Placeholder so the library links before the recorder is written (owner: tracing).
#include "tracing/trace_recorder.h"
namespace gpushim::tracing {
namespace detail {
std::atomic<bool> g_enabled{false};
void record_slow(EventKind, int, std::uint64_t, std::uint64_t, std::uint64_t, BackendId) noexcept {}
}  // namespace detail
void start_from_settings() noexcept {}
void flush() noexcept {}
}  // namespace gpushim::tracing
