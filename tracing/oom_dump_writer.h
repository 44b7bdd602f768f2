// Writes an out-of-memory dump (GPUSHIM_OOM_DUMP): a file in the trace format flagged
// format::kFlagOomDump, so every `gpushim trace` tool reads it (docs/oom-dump.md). The router decides
// what goes in (router/out_of_memory.cpp); this only lays out records.
//
// It runs inside the program at the moment an allocation failed: no exception escapes, nothing is
// allocated (records go through one fixed 64 KiB buffer, written a chunk at a time), and no lock is
// taken. One writer at a time: the router lets only the first failure of a process write.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tracing/trace_format.h"
#include "tracing/trace_recorder.h"

namespace gpushim::tracing {

struct DumpBlock {
  std::uint64_t address = 0;
  std::uint64_t size = 0;      // requested bytes
  std::uint64_t stream = 0;
  std::uint64_t time_ns = 0;   // CLOCK_MONOTONIC at the allocation; 0: not known
  int device = 0;
  bool async = false;
  BackendId backend = BackendId::unknown;
  const std::uint64_t* frames = nullptr;
  int frame_count = 0;
};

class OomDumpWriter {
 public:
  // Creates the file (%p, %r expanded as for GPUSHIM_TRACE) and writes the header, and the module map
  // when stack_depth > 0. `start_ns` is when gpushim started: event times are counted from it.
  // `flags`: more format::kFlag* bits (kFlagOomDump is always set).
  bool open(const char* path_pattern, std::uint64_t start_ns, int stack_depth, std::uint32_t flags = 0) noexcept;
  // One device's state, as format::DeviceStateRecord lays it out (its type byte is set here).
  void device(format::DeviceStateRecord state) noexcept;
  void block(const DumpBlock& live) noexcept;
  // The failing request, last: an out_of_memory event at `time_ns` with the stack that asked.
  void failure(const DumpBlock& request) noexcept;
  // Flushes, marks the file as whole and closes it. False when any write failed.
  bool close() noexcept;
  const char* path() const noexcept { return path_; }

 private:
  static constexpr std::size_t kBufferBytes = 64 * 1024;
  void event(EventKind kind, const DumpBlock& block) noexcept;
  void append(const void* record, std::size_t bytes, const std::uint64_t* frames, int frame_count) noexcept;
  void flush() noexcept;

  int fd_ = -1;
  bool ok_ = false;
  std::uint64_t start_ns_ = 0;
  int stack_depth_ = 0;
  std::size_t used_ = sizeof(format::ChunkHeader);
  std::uint32_t records_ = 0;
  char path_[4096] = {};
  alignas(8) unsigned char buffer_[kBufferBytes];
};

}  // namespace gpushim::tracing
