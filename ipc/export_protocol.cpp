#include "ipc/export_protocol.h"

#include <cstring>

namespace gpushim::ipc::protocol {

RequestDecision judge_request(const void* message, std::size_t bytes, std::uint64_t token,
                              bool same_user) noexcept {
  RequestDecision decision;
  if (message == nullptr || bytes != sizeof(Request)) return decision;
  Request request;
  std::memcpy(&request, message, sizeof request);
  if (request.magic != kMagic || request.zero != 0) return decision;
  decision.export_id = request.export_id;
  if (!same_user || request.token != token) {
    decision.action = RequestAction::refuse;
  } else if (request.operation == kFetch) {
    decision.action = RequestAction::fetch;
  } else if (request.operation == kRelease) {
    decision.action = RequestAction::release;
  } else {
    decision.action = RequestAction::unknown;
  }
  return decision;
}

FetchStatus judge_reply_header(const void* message, std::size_t bytes, ExportRecord* record,
                               std::uint32_t* chunk_count) noexcept {
  if (message == nullptr || bytes != sizeof(ReplyHeader)) return FetchStatus::protocol_error;
  ReplyHeader header;
  std::memcpy(&header, message, sizeof header);
  if (header.magic != kMagic) return FetchStatus::protocol_error;
  switch (header.status) {
    case kReplyOk: break;
    case kReplyRefused: return FetchStatus::refused;
    case kReplyUnknown: return FetchStatus::unknown_export;
    default: return FetchStatus::protocol_error;
  }
  const bool pool = header.kind == static_cast<std::uint32_t>(ExportKind::pool_pointer);
  const bool chunks = header.kind == static_cast<std::uint32_t>(ExportKind::mapped_chunks);
  if (!(pool || chunks) || header.chunk_count == 0 || header.chunk_count > kMaxChunksPerExport ||
      (pool && header.chunk_count != 1) || header.block_size == 0)
    return FetchStatus::protocol_error;
  record->kind = static_cast<ExportKind>(header.kind);
  record->block_size = header.block_size;
  record->offset_in_span = header.offset_in_span;
  record->device = header.device;
  record->pool_id = header.pool_id;
  std::memcpy(record->pool_pointer_data.data(), header.pool_pointer_data, kPoolPointerDataSize);
  *chunk_count = header.chunk_count;
  return FetchStatus::ok;
}

bool judge_chunk_batch(const void* message, std::size_t bytes, std::size_t expected, ChunkWire* out) noexcept {
  if (message == nullptr || bytes != sizeof(ChunkBatch) || expected == 0 || expected > kMaxFdsPerMessage)
    return false;
  ChunkBatch batch;
  std::memcpy(&batch, message, sizeof batch);
  if (batch.magic != kMagic || batch.count != expected || batch.zero != 0) return false;
  std::memcpy(out, batch.chunks, expected * sizeof(ChunkWire));
  return true;
}

bool chunks_cover_block(const ExportRecord& record) noexcept {
  if (record.kind != ExportKind::mapped_chunks || record.chunks.empty()) return false;
  std::uint64_t span = 0;
  for (const ExportedChunk& chunk : record.chunks) {
    if (chunk.offset_in_span != span || chunk.size == 0 || span + chunk.size < span) return false;
    span += chunk.size;
  }
  const std::uint64_t end = record.offset_in_span + record.block_size;
  return end >= record.offset_in_span && end <= span;
}

}  // namespace gpushim::ipc::protocol
