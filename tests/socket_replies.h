// What a hostile client of the export server reads back (tests/ipc_export_protocol_test.cpp and
// fuzz/ipc_protocol_fuzzer.cpp): every message until the server closes, whatever their sizes, with every
// descriptor that arrives closed and counted. ipc::receive_with_fds reads one message of a known shape;
// a client probing the server with garbage cannot know the shape of the answer.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace gpushim::test_support {

struct SocketReplies {
  std::string bytes;          // all messages, in order
  std::size_t first_size = 0; // the first message's length (a reply header, when the server answered)
  std::size_t messages = 0;
  int descriptors = 0;        // received and closed
  int error = 0;              // errno of the read that failed (a timeout: EAGAIN); 0 when the server closed
};

inline SocketReplies read_until_closed(int fd) {
  SocketReplies replies;
  for (;;) {
    // 64 KiB: more than any message the server sends (a ChunkBatch), so none is cut (SOCK_SEQPACKET).
    static thread_local char buffer[64 << 10];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];  // the kernel's SCM_MAX_FD
    iovec io{buffer, sizeof buffer};
    msghdr message{};
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &message, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;  // a signal (libFuzzer's timeout alarm), not the server
    if (n < 0) {
      replies.error = errno;
      break;
    }
    if (n == 0) break;
    for (cmsghdr* c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
        ::close(received);
        ++replies.descriptors;
      }
    }
    if (replies.messages++ == 0) replies.first_size = std::size_t(n);
    replies.bytes.append(buffer, std::size_t(n));
  }
  return replies;
}

}  // namespace gpushim::test_support
