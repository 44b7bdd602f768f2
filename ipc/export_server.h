// How an importer gets the exporter's physical memory: it connects to the exporter's Unix-domain
// socket, names an export, and receives its chunks' file descriptors (SCM_RIGHTS) — or, for a block
// of a driver memory pool, the pool's descriptor and the block's export data. From then on the importer
// holds the export (the exporter defers freeing the block) until it connects again to release it.
//
// The exporter serves from one thread, started the first time it exports (a process that never calls
// cuIpcGetMemHandle on gpushim memory never has it). The socket lives in the abstract namespace
// ("\0gpushim-ipc.<pid>"): no file to clean up, it vanishes with the process. Only peers of the same
// uid are answered (SO_PEERCRED), and a request must carry the exporter's random token, which only
// holders of a handle know. Every socket has a timeout, so neither side can hang the other.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <sys/types.h>

#include "ipc/export_protocol.h"
#include "ipc/export_registry.h"

namespace gpushim::ipc {

class ExportServer {
 public:
  // Serves `registry` under `socket_name` (abstract namespace, without the leading NUL) to requests
  // carrying `token`. Nothing happens until start().
  ExportServer(ExportRegistry& registry, std::uint64_t token, std::string socket_name) noexcept;
  ~ExportServer() { stop(); }
  ExportServer(const ExportServer&) = delete;
  ExportServer& operator=(const ExportServer&) = delete;

  // Binds, listens and starts the serving thread; later calls return at once. False if the socket or
  // the thread cannot be had (the caller turns that into a CUDA error).
  bool start() noexcept;
  // Stops the thread (tests). The process-wide server is never stopped: it dies with the process.
  void stop() noexcept;
  // In the child of a fork: the thread is not there any more, the listening socket is the parent's.
  void reset_after_fork() noexcept;

  static std::string socket_name_for(pid_t pid);

 private:
  static void* serve_thread(void* self) noexcept;
  void serve() noexcept;
  void answer(int connection) noexcept;

  ExportRegistry& registry_;
  const std::uint64_t token_;
  const std::string socket_name_;
  std::mutex start_mutex_;
  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  int listen_fd_ = -1;
  unsigned long thread_ = 0;  // pthread_t
};

const char* fetch_status_name(FetchStatus status) noexcept;

// Asks the server `socket_name` for export `export_id`. On ok, out->chunks[i].fd are descriptors the
// caller owns and must close, and this process holds the export until release_export().
FetchStatus fetch_export(const std::string& socket_name, std::uint64_t token, std::uint64_t export_id,
                         ExportRecord* out) noexcept;

// Tells the server this process closed export `export_id` (once per successful fetch_export). ok, or
// unknown_export when it held none; no_exporter once the exporter has exited (nothing to tell then).
FetchStatus release_export(const std::string& socket_name, std::uint64_t token, std::uint64_t export_id) noexcept;

}  // namespace gpushim::ipc
