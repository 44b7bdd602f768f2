#include "ipc/fd_passing.h"

#include <cerrno>
#include <cstring>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

namespace gpushim::ipc {
namespace {

// Control buffer big enough for a full batch, aligned as cmsghdr needs.
union ControlBuffer {
  char bytes[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  cmsghdr align;
};

}  // namespace

bool send_with_fds(int socket, const void* payload, std::size_t bytes, const int* fds, std::size_t fd_count) noexcept {
  if (fd_count > kMaxFdsPerMessage || bytes == 0) return false;
  iovec io{const_cast<void*>(payload), bytes};
  msghdr message{};
  message.msg_iov = &io;
  message.msg_iovlen = 1;
  ControlBuffer control;
  std::memset(&control, 0, sizeof control);
  if (fd_count > 0) {
    message.msg_control = control.bytes;
    message.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
    std::memcpy(CMSG_DATA(header), fds, sizeof(int) * fd_count);
  }
  ssize_t sent;
  do {
    sent = ::sendmsg(socket, &message, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  return sent == static_cast<ssize_t>(bytes);
}

bool receive_with_fds(int socket, void* payload, std::size_t bytes, int* fds, std::size_t fd_count) noexcept {
  if (fd_count > kMaxFdsPerMessage || bytes == 0) return false;
  iovec io{payload, bytes};
  msghdr message{};
  message.msg_iov = &io;
  message.msg_iovlen = 1;
  ControlBuffer control;
  std::memset(&control, 0, sizeof control);
  message.msg_control = control.bytes;
  message.msg_controllen = sizeof control.bytes;
  ssize_t received;
  do {
    received = ::recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
  } while (received < 0 && errno == EINTR);
  if (received < 0) return false;

  std::size_t arrived = 0;
  for (cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr; header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* incoming = reinterpret_cast<const int*>(CMSG_DATA(header));
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, incoming + i, sizeof fd);
      if (arrived < fd_count) {
        fds[arrived++] = fd;
      } else {
        ::close(fd);  // more than asked for: the peer does not speak our protocol
        arrived = fd_count + 1;
      }
    }
  }
  const bool ok = received == static_cast<ssize_t>(bytes) && arrived == fd_count &&
                  (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) == 0;
  if (!ok) {
    for (std::size_t i = 0; i < arrived && i < fd_count; ++i) ::close(fds[i]);
  }
  return ok;
}

}  // namespace gpushim::ipc
