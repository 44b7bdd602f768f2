// Return addresses of the current call stack, for GPUSHIM_TRACE_STACK. libunwind is loaded with dlopen
// at run time: Debian's libunwind.a is not position-independent, and the GPU machine has no libunwind
// at all, so libgpushim.so must load and trace without it (then stacks are simply off).
#pragma once

#include <cstdint>

namespace gpushim::tracing {

// Loads libunwind.so.8 once, else falls back to glibc's backtrace(). False (and stacks stay off) only
// when neither works. Cold path.
bool load_unwinder() noexcept;

// Writes up to `max_frames` return addresses, innermost first, dropping this function's own frame and
// `skip` more (the recorder's). Returns how many were written; 0 when load_unwinder() failed.
int capture_stack(std::uint64_t* frames, int max_frames, int skip) noexcept;

}  // namespace gpushim::tracing
