// The export socket's messages (ipc/export_server.cpp speaks them) and the pure functions that judge
// them. Everything that arrives on the socket comes from another process, maybe a hostile one, so each
// message is checked here, in code with no socket and no driver in it, before anything acts on it: a
// fuzz target (fuzz/ipc_protocol_fuzzer.cpp) feeds these functions arbitrary bytes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ipc/export_registry.h"
#include "ipc/fd_passing.h"

namespace gpushim::ipc {

enum class FetchStatus {
  ok,
  no_exporter,     // nobody listens under the exporter's name: it exited, or it is not under gpushim
  refused,         // wrong token, or another user
  unknown_export,  // the exporter has no such export, or released its memory since
  protocol_error,  // timeout, short message, missing descriptors, a malformed answer
};

namespace protocol {

// Version 2 added the request's operation (release) and pool exports; a version-1 peer's messages are
// ignored (the importer then reports a protocol error, never a wrong mapping).
inline constexpr std::uint64_t kMagic = 0x3270696d68737067ull;  // "gpshmip2"
// A block larger than this many physical chunks is refused; with chunks of at least 2 MiB that is at
// least 8 GiB in one block, mapped in the smallest steps.
inline constexpr std::uint32_t kMaxChunksPerExport = 4096;

enum Operation : std::uint32_t {
  kFetch = 0,    // send the export's descriptors; the asking process holds the export from then on
  kRelease = 1,  // the asking process closed the export
};

struct Request {
  std::uint64_t magic;
  std::uint64_t token;
  std::uint64_t export_id;
  std::uint32_t operation;
  std::uint32_t zero;
};

enum ReplyStatus : std::uint32_t { kReplyOk = 0, kReplyRefused = 1, kReplyUnknown = 2 };

struct ReplyHeader {
  std::uint64_t magic;
  std::uint32_t status;
  std::uint32_t chunk_count;
  std::uint64_t block_size;
  std::uint64_t offset_in_span;
  std::int32_t device;
  std::uint32_t kind;  // ExportKind
  std::uint64_t pool_id;
  std::uint8_t pool_pointer_data[kPoolPointerDataSize];
};

struct ChunkWire {
  std::uint64_t offset_in_span;
  std::uint64_t size;
};

struct ChunkBatch {
  std::uint64_t magic;
  std::uint32_t count;
  std::uint32_t zero;
  ChunkWire chunks[kMaxFdsPerMessage];
};

// The server's judgement of one received message.
enum class RequestAction {
  ignore,   // not our protocol (wrong size, magic, padding): close without an answer
  refuse,   // our protocol, but another user or a wrong token: answer kReplyRefused
  unknown,  // an operation this version does not know: answer kReplyUnknown
  fetch,
  release,
};
struct RequestDecision {
  RequestAction action = RequestAction::ignore;
  std::uint64_t export_id = 0;
};
// `bytes` as received; `same_user` is what SO_PEERCRED said of the sender.
RequestDecision judge_request(const void* message, std::size_t bytes, std::uint64_t token,
                              bool same_user) noexcept;

// The importer's judgement of the server's first answer. On ok, fills the record's fields (not its
// chunks) and *chunk_count (1..kMaxChunksPerExport; exactly 1 for a pool block).
FetchStatus judge_reply_header(const void* message, std::size_t bytes, ExportRecord* record,
                               std::uint32_t* chunk_count) noexcept;

// The importer's judgement of one batch of chunk descriptions, which must hold exactly `expected`
// chunks. True: `out` has them (offsets and sizes; fds are the caller's business).
bool judge_chunk_batch(const void* message, std::size_t bytes, std::size_t expected, ChunkWire* out) noexcept;

// True when a mapped_chunks record's chunks tile [0, span) in order with no empty chunk, and the block
// lies inside that span, all without overflow: nothing the importer maps can reach past what the
// exporter sent. (The importer still checks the chunks against the device's granularity.)
bool chunks_cover_block(const ExportRecord& record) noexcept;

}  // namespace protocol
}  // namespace gpushim::ipc
