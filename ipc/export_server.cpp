#include "ipc/export_server.h"

#include <cerrno>
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ipc/fd_passing.h"

namespace gpushim::ipc {
namespace {

using namespace protocol;

// Long enough for a loaded machine, short enough that a dead or stuck peer costs a bounded wait.
constexpr int kSocketTimeoutSeconds = 5;

bool make_address(const std::string& name, sockaddr_un* address, socklen_t* length) noexcept {
  std::memset(address, 0, sizeof *address);
  address->sun_family = AF_UNIX;
  if (name.size() + 1 > sizeof address->sun_path) return false;
  address->sun_path[0] = '\0';  // abstract namespace
  std::memcpy(address->sun_path + 1, name.data(), name.size());
  *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return true;
}

void set_timeouts(int fd) noexcept {
  timeval timeout{kSocketTimeoutSeconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
}

// The connecting process, as the kernel vouches for it. False for another user (or no answer).
bool peer_of_same_user(int connection, pid_t* pid) noexcept {
  ucred peer{};
  socklen_t length = sizeof peer;
  if (::getsockopt(connection, SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0) return false;
  *pid = peer.pid;
  return peer.uid == ::getuid();
}

void close_chunks(ExportRecord* record) noexcept {
  for (ExportedChunk& chunk : record->chunks) {
    if (chunk.fd >= 0) ::close(chunk.fd);
    chunk.fd = -1;
  }
}

}  // namespace

ExportServer::ExportServer(ExportRegistry& registry, std::uint64_t token, std::string socket_name) noexcept
    : registry_(registry), token_(token), socket_name_(std::move(socket_name)) {}

std::string ExportServer::socket_name_for(pid_t pid) { return "gpushim-ipc." + std::to_string(pid); }

bool ExportServer::start() noexcept {
  if (running_.load(std::memory_order_acquire)) return true;
  std::lock_guard<std::mutex> guard(start_mutex_);
  if (running_.load(std::memory_order_relaxed)) return true;

  sockaddr_un address;
  socklen_t length;
  if (!make_address(socket_name_, &address, &length)) return false;
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), length) != 0 || ::listen(fd, 16) != 0) {
    ::close(fd);
    return false;
  }
  listen_fd_ = fd;
  stopping_.store(false);

  // The thread takes no signals: they belong to the program's own threads.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pthread_t thread;
  const int rc = pthread_create(&thread, nullptr, &ExportServer::serve_thread, this);
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (rc != 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    return false;
  }
  thread_ = static_cast<unsigned long>(thread);
  running_.store(true, std::memory_order_release);
  return true;
}

void ExportServer::stop() noexcept {
  std::lock_guard<std::mutex> guard(start_mutex_);
  if (!running_.load()) return;
  stopping_.store(true);
  ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
  pthread_join(static_cast<pthread_t>(thread_), nullptr);
  ::close(listen_fd_);
  listen_fd_ = -1;
  running_.store(false);
}

void ExportServer::reset_after_fork() noexcept {
  new (&start_mutex_) std::mutex();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  running_.store(false);
}

void* ExportServer::serve_thread(void* self) noexcept {
  static_cast<ExportServer*>(self)->serve();
  return nullptr;
}

void ExportServer::serve() noexcept {
  while (!stopping_.load()) {
    int connection = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) {
      if (stopping_.load()) break;
      if (errno != EINTR) {
        // Out of descriptors or similar: back off instead of spinning; importers time out and retry.
        timespec pause{0, 10 * 1000 * 1000};
        nanosleep(&pause, nullptr);
      }
      continue;
    }
    set_timeouts(connection);
    answer(connection);
    ::close(connection);
  }
}

void ExportServer::answer(int connection) noexcept {
  Request request{};
  if (!receive_with_fds(connection, &request, sizeof request, nullptr, 0)) return;
  pid_t importer = 0;
  const bool same_user = peer_of_same_user(connection, &importer);
  const RequestDecision decision = judge_request(&request, sizeof request, token_, same_user);
  if (decision.action == RequestAction::ignore) return;

  ReplyHeader header{};
  header.magic = kMagic;
  ExportRecord record;
  if (decision.action == RequestAction::refuse) {
    header.status = kReplyRefused;
  } else if (decision.action == RequestAction::release) {
    header.status = registry_.release(request.export_id, importer) ? kReplyOk : kReplyUnknown;
    send_with_fds(connection, &header, sizeof header, nullptr, 0);
    return;
  } else if (decision.action != RequestAction::fetch ||
             !registry_.find_for_import(request.export_id, importer, &record)) {
    header.status = kReplyUnknown;
  } else if (record.chunks.size() > kMaxChunksPerExport) {
    registry_.release(request.export_id, importer);
    close_chunks(&record);
    header.status = kReplyUnknown;
  } else {
    header.status = kReplyOk;
    header.chunk_count = static_cast<std::uint32_t>(record.chunks.size());
    header.block_size = record.block_size;
    header.offset_in_span = record.offset_in_span;
    header.device = record.device;
    header.kind = static_cast<std::uint32_t>(record.kind);
    header.pool_id = record.pool_id;
    std::memcpy(header.pool_pointer_data, record.pool_pointer_data.data(), kPoolPointerDataSize);
  }
  if (!send_with_fds(connection, &header, sizeof header, nullptr, 0) || header.status != kReplyOk) {
    if (header.status == kReplyOk) registry_.release(request.export_id, importer);
    close_chunks(&record);
    return;
  }
  bool sent = true;
  for (std::size_t first = 0; sent && first < record.chunks.size(); first += kMaxFdsPerMessage) {
    ChunkBatch batch{};
    batch.magic = kMagic;
    int fds[kMaxFdsPerMessage];
    std::size_t count = 0;
    for (; count < kMaxFdsPerMessage && first + count < record.chunks.size(); ++count) {
      const ExportedChunk& chunk = record.chunks[first + count];
      batch.chunks[count] = ChunkWire{chunk.offset_in_span, chunk.size};
      fds[count] = chunk.fd;
    }
    batch.count = static_cast<std::uint32_t>(count);
    sent = send_with_fds(connection, &batch, sizeof batch, fds, count);
  }
  // An importer that did not get every descriptor maps nothing, so it holds nothing. (One that got them
  // all but then fails to map sends a release itself.)
  if (!sent) registry_.release(request.export_id, importer);
  close_chunks(&record);  // the importer has its own copies now (or gave up)
}

const char* fetch_status_name(FetchStatus status) noexcept {
  switch (status) {
    case FetchStatus::ok: return "ok";
    case FetchStatus::no_exporter: return "no exporter listening (it exited, or does not run under gpushim)";
    case FetchStatus::refused: return "refused (another user, or a forged handle)";
    case FetchStatus::unknown_export: return "unknown export (the exporter released that memory)";
    case FetchStatus::protocol_error: return "protocol error or timeout";
  }
  return "?";
}

namespace {

// A connected socket to the server `socket_name`, or -1 (*status says why).
int connect_to(const std::string& socket_name, FetchStatus* status) noexcept {
  sockaddr_un address;
  socklen_t length;
  *status = FetchStatus::no_exporter;
  if (!make_address(socket_name, &address, &length)) return -1;
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *status = FetchStatus::protocol_error;
    return -1;
  }
  set_timeouts(fd);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&address), length);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

FetchStatus fetch_export(const std::string& socket_name, std::uint64_t token, std::uint64_t export_id,
                         ExportRecord* out) noexcept {
  if (out == nullptr) return FetchStatus::protocol_error;
  FetchStatus status;
  const int fd = connect_to(socket_name, &status);
  if (fd < 0) return status;

  status = FetchStatus::protocol_error;
  ExportRecord record;
  const Request request{kMagic, token, export_id, kFetch, 0};
  ReplyHeader header{};
  std::uint32_t chunk_count = 0;
  if (send_with_fds(fd, &request, sizeof request, nullptr, 0) &&
      receive_with_fds(fd, &header, sizeof header, nullptr, 0)) {
    status = judge_reply_header(&header, sizeof header, &record, &chunk_count);
    if (status == FetchStatus::ok) {
      bool complete = true;
      try {
        record.chunks.reserve(chunk_count);
        while (record.chunks.size() < chunk_count) {
          const std::size_t expected = std::min<std::size_t>(kMaxFdsPerMessage, chunk_count - record.chunks.size());
          ChunkBatch batch{};
          ChunkWire wires[kMaxFdsPerMessage];
          int fds[kMaxFdsPerMessage];
          if (!receive_with_fds(fd, &batch, sizeof batch, fds, expected)) {
            complete = false;
            break;
          }
          if (!judge_chunk_batch(&batch, sizeof batch, expected, wires)) {
            for (std::size_t i = 0; i < expected; ++i) ::close(fds[i]);
            complete = false;
            break;
          }
          for (std::size_t i = 0; i < expected; ++i)
            record.chunks.push_back(ExportedChunk{wires[i].offset_in_span, wires[i].size, fds[i]});
        }
      } catch (...) {
        complete = false;  // reserve() failed before any fd arrived, or push_back cannot fail after it
      }
      // A pool block's one "chunk" is the pool's descriptor; mapped chunks must tile the block.
      if (complete && record.kind == ExportKind::mapped_chunks && !chunks_cover_block(record)) complete = false;
      if (!complete) {
        close_chunks(&record);
        status = FetchStatus::protocol_error;
      }
    }
  }
  ::close(fd);
  if (status == FetchStatus::ok) *out = std::move(record);
  return status;
}

FetchStatus release_export(const std::string& socket_name, std::uint64_t token, std::uint64_t export_id) noexcept {
  FetchStatus status;
  const int fd = connect_to(socket_name, &status);
  if (fd < 0) return status;
  const Request request{kMagic, token, export_id, kRelease, 0};
  ReplyHeader header{};
  status = FetchStatus::protocol_error;
  if (send_with_fds(fd, &request, sizeof request, nullptr, 0) &&
      receive_with_fds(fd, &header, sizeof header, nullptr, 0)) {
    // A release's answer carries no export: only its status counts.
    if (header.magic == kMagic)
      status = header.status == kReplyOk        ? FetchStatus::ok
               : header.status == kReplyRefused ? FetchStatus::refused
               : header.status == kReplyUnknown ? FetchStatus::unknown_export
                                                : FetchStatus::protocol_error;
  }
  ::close(fd);
  return status;
}

}  // namespace gpushim::ipc
