// Reads a gpushim trace (raw, or compressed with zstd) into memory for the `gpushim trace` tools.
// A damaged file is a value, not a crash: read_trace() returns a TraceError with the byte offset where
// the damage starts. A file that simply stops after a whole chunk (the program was killed) reads fine,
// with `clean_end` false; one that stops inside a chunk (a half-copied file) reads the events before
// the cut, with `truncated` set. Every input is untrusted: what is opened must be a regular file or a
// pipe, what is inflated and held is capped (ReadLimits), and every field that sizes something is
// checked before it is used (docs/trace-format.md, "Reading untrusted traces").
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tracing/trace_format.h"
#include "tracing/trace_recorder.h"

namespace gpushim::tracing {

struct TraceEvent {
  std::uint64_t time_ns;       // since the start of recording
  std::uint64_t stream;
  std::uint64_t address;
  std::uint64_t size;
  std::uint32_t thread_id;
  std::int32_t device;
  std::uint32_t first_frame;   // index into Trace::frames
  std::uint16_t frame_count;
  EventKind kind;
  BackendId backend;
};

// Allocations and frees pair up by block_key(): an address is only unique on its device.
inline bool is_alloc(EventKind k) { return k == EventKind::alloc || k == EventKind::alloc_async; }
inline bool is_free(EventKind k) { return k == EventKind::free || k == EventKind::free_async; }
inline std::uint64_t block_key(const TraceEvent& e) {
  return e.address ^ (std::uint64_t(std::uint32_t(e.device)) << 56);
}

struct TraceModule {
  std::string path;
  std::string build_id;        // lowercase hex; empty when the module had none
  std::uint64_t base = 0;      // frame address - base = address in the ELF file
  std::uint64_t end = 0;
};

// What one device held when an out-of-memory dump was written (format::DeviceStateRecord).
struct DeviceSnapshot {
  std::int32_t device = 0;
  BackendId backend = BackendId::unknown;
  std::uint64_t live_bytes = 0;
  std::uint64_t live_blocks = 0;
  std::uint64_t reserved = 0;
  std::uint64_t cached = 0;
  std::uint64_t largest_free = 0;
  std::uint64_t pending_free = 0;
  std::uint64_t limit = 0;
  std::uint64_t failed_request = 0;
};

struct Trace {
  format::FileHeader header{};
  std::vector<TraceEvent> events;     // sorted by time (chunks of different threads interleave)
  std::vector<std::uint64_t> frames;  // return addresses of all events, innermost first
  std::vector<TraceModule> modules;   // every module seen, sorted by base
  bool clean_end = false;             // false: the recording was cut short (crash, kill)
  bool truncated = false;             // the file stops inside a chunk; `events` are those before it
  std::uint64_t truncated_at = 0;     // offset of the incomplete chunk (decompressed, for .zst)
  std::uint64_t bytes = 0;            // size of the (decompressed) trace
  bool compressed = false;
  std::vector<DeviceSnapshot> device_states;  // only in an out-of-memory dump, by device

  // An out-of-memory dump (GPUSHIM_OOM_DUMP): the events are the blocks live at the failure, then the
  // failing request (docs/oom-dump.md).
  bool is_oom_dump() const { return (header.flags & format::kFlagOomDump) != 0; }

  // The module holding `address`, or nullptr.
  const TraceModule* module_of(std::uint64_t address) const;
};

struct TraceError {
  std::uint64_t offset = 0;    // byte offset of the damage (in the decompressed trace for .zst files)
  std::string message;
};

enum class ReadStage { reading, decompressing, parsing };
// Called now and then while reading (at least every 16 MiB of work): bytes done, and bytes in all
// (for `decompressing`, done counts decompressed bytes and total the compressed file's size).
using ReadProgress = std::function<void(ReadStage stage, std::uint64_t done, std::uint64_t total)>;

struct ReadLimits {
  // Most bytes of trace held in memory (the file, or what it decompresses to): a zstd bomb stops here.
  std::uint64_t max_trace_bytes = default_max_trace_bytes();
  // A pipe that gives no byte for this long is abandoned (a FIFO with no writer never ends otherwise).
  int pipe_idle_timeout_ms = 30000;

  // A quarter of this machine's memory, at least 256 MiB: the events parsed from a trace take about
  // as much again as the trace itself, and the analyses more.
  static std::uint64_t default_max_trace_bytes();
};

bool parse_trace(const unsigned char* data, std::size_t bytes, Trace* out, TraceError* error,
                 const ReadProgress& progress = {});
bool read_trace(const std::string& path, Trace* out, TraceError* error,
                const ReadProgress& progress = {}, const ReadLimits& limits = {});
// The file's bytes as they are (no decompression), under the same checks as read_trace: a regular
// file or a pipe, at most limits.max_trace_bytes.
bool read_file_bytes(const std::string& path, std::vector<unsigned char>* out, TraceError* error,
                     const ReadProgress& progress = {}, const ReadLimits& limits = {});

// True when the bytes start with the zstd frame magic.
bool is_zstd(const unsigned char* data, std::size_t bytes);
// zstd-compresses `in` into `out` (the file `gpushim trace compress` writes). False with a message when
// this build has no zstd or the compression fails.
bool compress_zstd(const std::vector<unsigned char>& in, std::vector<unsigned char>* out,
                   std::string* message);

const char* event_kind_name(EventKind kind);
const char* backend_name(BackendId backend);

}  // namespace gpushim::tracing
