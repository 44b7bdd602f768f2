// GPUSHIM_STATS=1: the table of each device's counts and peaks, printed when the process exits.
#pragma once

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

void at_exit() noexcept;  // registered with std::atexit on the first request

}  // namespace gpushim::router

#pragma GCC visibility pop
