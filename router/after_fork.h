// A forked child starts over: see atfork_child() (router/after_fork.cpp).
#pragma once

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

void atfork_child() noexcept;  // registered with pthread_atfork on the first request

}  // namespace gpushim::router

#pragma GCC visibility pop
