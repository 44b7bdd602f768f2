// File descriptors between processes over a Unix-domain socket (SCM_RIGHTS): the only way a process
// can hand another one a descriptor without ptrace rights (see docs/ecosystem.md, "Why a socket").
#pragma once

#include <cstddef>

namespace gpushim::ipc {

// The kernel caps one message at SCM_MAX_FD (253) descriptors; batches stay well below it.
constexpr std::size_t kMaxFdsPerMessage = 64;

// Sends one message: `bytes` of payload plus `fd_count` descriptors (the sender keeps its own copies).
// False on any error or a short send. Retries EINTR.
bool send_with_fds(int socket, const void* payload, std::size_t bytes, const int* fds, std::size_t fd_count) noexcept;

// Receives one message of exactly `bytes` payload bytes and exactly `fd_count` descriptors (opened
// close-on-exec). On failure every descriptor that did arrive is closed and false is returned.
bool receive_with_fds(int socket, void* payload, std::size_t bytes, int* fds, std::size_t fd_count) noexcept;

}  // namespace gpushim::ipc
