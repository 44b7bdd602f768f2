#include "analysis/trace_reader.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <utility>

#ifdef GPUSHIM_HAVE_ZSTD
#include <zstd.h>
#endif

namespace gpushim::tracing {
namespace {

constexpr std::uint8_t kLastKnownEventKind = std::uint8_t(EventKind::spill_unmap);
// Progress is reported every this many bytes, so a multi-GiB trace shows movement without the
// callback costing anything on small ones.
constexpr std::uint64_t kProgressStep = 16ull << 20;

bool fail(TraceError* error, std::uint64_t offset, std::string message) {
  if (error) {
    error->offset = offset;
    error->message = std::move(message);
  }
  return false;
}

std::string to_hex(const unsigned char* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

// Parses the records of one chunk whose checksum already matched. `base` is the payload's file offset.
bool parse_chunk(const unsigned char* p, std::uint32_t bytes, std::uint64_t base,
                 const format::ChunkHeader& chunk, std::uint64_t start_ns, Trace* out,
                 std::map<std::pair<std::uint64_t, std::string>, std::size_t>* module_index,
                 bool* saw_end, TraceError* error) {
  std::uint32_t records = 0;
  std::size_t at = 0;
  while (at < bytes) {
    std::uint64_t offset = base + at;
    if (*saw_end) return fail(error, offset, "records after the end-of-trace record");
    auto type = format::RecordType(p[at]);
    if (type == format::RecordType::event) {
      if (bytes - at < sizeof(format::EventRecord))
        return fail(error, offset, "event record cut short inside its chunk");
      format::EventRecord rec;
      std::memcpy(&rec, p + at, sizeof rec);
      std::size_t need = sizeof rec + 8 * std::size_t(rec.frame_count);
      if (bytes - at < need) return fail(error, offset, "event record's stack runs past its chunk");
      if (rec.kind == 0 || rec.kind > kLastKnownEventKind)
        return fail(error, offset, "unknown event kind " + std::to_string(rec.kind));
      TraceEvent e;
      e.time_ns = rec.time_ns >= start_ns ? rec.time_ns - start_ns : 0;
      e.stream = rec.stream;
      e.address = rec.address;
      e.size = rec.size;
      e.thread_id = chunk.thread_id;
      e.device = rec.device;
      e.first_frame = std::uint32_t(out->frames.size());
      e.frame_count = rec.frame_count;
      e.kind = EventKind(rec.kind);
      e.backend = BackendId(rec.backend);
      for (unsigned i = 0; i < rec.frame_count; ++i) {
        std::uint64_t frame;
        std::memcpy(&frame, p + at + sizeof rec + 8 * i, 8);
        out->frames.push_back(frame);
      }
      out->events.push_back(e);
      at += need;
    } else if (type == format::RecordType::module) {
      if (bytes - at < sizeof(format::ModuleRecord))
        return fail(error, offset, "module record cut short inside its chunk");
      format::ModuleRecord rec;
      std::memcpy(&rec, p + at, sizeof rec);
      std::size_t need = sizeof rec + format::pad8(std::size_t(rec.path_bytes) + rec.build_id_bytes);
      if (bytes - at < need) return fail(error, offset, "module record's path runs past its chunk");
      if (rec.end < rec.base) return fail(error, offset, "module record ends before it starts");
      TraceModule m;
      m.path.assign(reinterpret_cast<const char*>(p + at + sizeof rec), rec.path_bytes);
      m.build_id = to_hex(p + at + sizeof rec + rec.path_bytes, rec.build_id_bytes);
      m.base = rec.base;
      m.end = rec.end;
      auto key = std::make_pair(m.base, m.path);
      if (!module_index->count(key)) {
        (*module_index)[key] = out->modules.size();
        out->modules.push_back(std::move(m));
      }
      at += need;
    } else if (type == format::RecordType::device_state) {
      if (bytes - at < sizeof(format::DeviceStateRecord))
        return fail(error, offset, "device state record cut short inside its chunk");
      format::DeviceStateRecord rec;
      std::memcpy(&rec, p + at, sizeof rec);
      DeviceSnapshot d;
      d.device = rec.device;
      d.backend = BackendId(rec.backend);
      d.live_bytes = rec.live_bytes;
      d.live_blocks = rec.live_blocks;
      d.reserved = rec.reserved_bytes;
      d.cached = rec.cached_bytes;
      d.largest_free = rec.largest_free;
      d.pending_free = rec.pending_free;
      d.limit = rec.limit;
      d.failed_request = rec.failed_request;
      out->device_states.push_back(d);
      at += sizeof rec;
    } else if (type == format::RecordType::end) {
      if (bytes - at < sizeof(format::EndRecord))
        return fail(error, offset, "end record cut short inside its chunk");
      *saw_end = true;
      at += sizeof(format::EndRecord);
    } else {
      return fail(error, offset, "unknown record type " + std::to_string(p[at]));
    }
    ++records;
  }
  if (records != chunk.record_count)
    return fail(error, base - sizeof(format::ChunkHeader),
                "chunk says " + std::to_string(chunk.record_count) + " records but holds " +
                    std::to_string(records));
  return true;
}

}  // namespace

const TraceModule* Trace::module_of(std::uint64_t address) const {
  auto it = std::upper_bound(modules.begin(), modules.end(), address,
                             [](std::uint64_t a, const TraceModule& m) { return a < m.base; });
  // Modules may overlap in the list (a library unloaded and another loaded at its address): look back
  // a few entries for one that covers the address.
  for (int back = 0; back < 4 && it != modules.begin(); ++back) {
    --it;
    if (address >= it->base && address < it->end) return &*it;
  }
  return nullptr;
}

bool parse_trace(const unsigned char* data, std::size_t bytes, Trace* out, TraceError* error,
                 const ReadProgress& progress) {
  *out = Trace{};
  out->bytes = bytes;
  if (bytes == 0) return fail(error, 0, "the file is empty (no trace header)");
  if (bytes < sizeof(format::FileHeader) &&
      std::memcmp(data, format::kMagic, std::min(bytes, sizeof format::kMagic)) != 0)
    return fail(error, 0, "not a gpushim trace (wrong magic)");
  if (bytes < sizeof(format::FileHeader))
    return fail(error, bytes, "the file ends inside the 64-byte trace header");
  format::FileHeader& h = out->header;
  std::memcpy(&h, data, sizeof h);
  if (std::memcmp(h.magic, format::kMagic, sizeof h.magic) != 0)
    return fail(error, 0, "not a gpushim trace (wrong magic)");
  if (h.version > format::kVersion)
    return fail(error, 8, "trace format version " + std::to_string(h.version) +
                              " is newer than this tool reads (up to " +
                              std::to_string(format::kVersion) + "); use a newer gpushim");
  if (h.version == 0) return fail(error, 8, "trace format version 0 is invalid");
  if (h.header_bytes < sizeof(format::FileHeader) || h.header_bytes > bytes)
    return fail(error, 12, "header size " + std::to_string(h.header_bytes) + " is invalid");

  std::map<std::pair<std::uint64_t, std::string>, std::size_t> module_index;
  bool saw_end = false;
  std::uint64_t next_progress = kProgressStep;
  std::size_t at = h.header_bytes;
  while (at < bytes) {
    if (bytes - at < sizeof(format::ChunkHeader))
      return fail(error, at, "the file ends inside a chunk header (truncated)");
    format::ChunkHeader chunk;
    std::memcpy(&chunk, data + at, sizeof chunk);
    if (std::memcmp(chunk.magic, format::kChunkMagic, sizeof chunk.magic) != 0)
      return fail(error, at, "corrupted: no chunk starts here");
    if (chunk.payload_bytes % 8 != 0 || chunk.payload_bytes > format::kMaxChunkPayload)
      return fail(error, at, "corrupted: impossible chunk size " + std::to_string(chunk.payload_bytes));
    if (bytes - at - sizeof chunk < chunk.payload_bytes)
      return fail(error, at, "the file ends inside a chunk of " + std::to_string(chunk.payload_bytes) +
                                 " bytes (truncated after byte " + std::to_string(bytes) + ")");
    const unsigned char* payload = data + at + sizeof chunk;
    if (format::chunk_checksum(chunk.thread_id, chunk.record_count, payload, chunk.payload_bytes) !=
        chunk.checksum)
      return fail(error, at, "corrupted: the chunk's checksum does not match its contents");
    if (!parse_chunk(payload, chunk.payload_bytes, at + sizeof chunk, chunk, h.start_monotonic_ns, out,
                     &module_index, &saw_end, error))
      return false;
    at += sizeof chunk + chunk.payload_bytes;
    if (progress && at >= next_progress) {
      progress(at, bytes);
      next_progress = at + kProgressStep;
    }
  }
  out->clean_end = saw_end;
  // One thread's events are in order; chunks of different threads interleave.
  std::stable_sort(out->events.begin(), out->events.end(),
                   [](const TraceEvent& a, const TraceEvent& b) { return a.time_ns < b.time_ns; });
  std::sort(out->modules.begin(), out->modules.end(),
            [](const TraceModule& a, const TraceModule& b) { return a.base < b.base; });
  if (progress) progress(bytes, bytes);
  return true;
}

bool is_zstd(const unsigned char* data, std::size_t bytes) {
  return bytes >= 4 && data[0] == 0x28 && data[1] == 0xB5 && data[2] == 0x2F && data[3] == 0xFD;
}

namespace {

bool decompress_zstd(const std::vector<unsigned char>& in, std::vector<unsigned char>* out,
                     TraceError* error) {
#ifdef GPUSHIM_HAVE_ZSTD
  ZSTD_DStream* stream = ZSTD_createDStream();
  if (!stream) return fail(error, 0, "zstd: out of memory");
  std::vector<unsigned char> buffer(ZSTD_DStreamOutSize());
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  std::size_t last = 0;
  for (;;) {
    ZSTD_outBuffer output{buffer.data(), buffer.size(), 0};
    last = ZSTD_decompressStream(stream, &output, &input);
    if (ZSTD_isError(last)) {
      std::string message = std::string("corrupted zstd data: ") + ZSTD_getErrorName(last) +
                            " (offset is in the compressed file)";
      ZSTD_freeDStream(stream);
      return fail(error, input.pos, message);
    }
    out->insert(out->end(), buffer.begin(), buffer.begin() + output.pos);
    // All input consumed and the decoder had no more to give: done.
    if (input.pos == input.size && output.pos < output.size) break;
  }
  ZSTD_freeDStream(stream);
  if (last != 0 && !ZSTD_isError(last))
    return fail(error, in.size(), "the zstd stream is truncated (offset is in the compressed file)");
  return true;
#else
  (void)in;
  (void)out;
  return fail(error, 0, "this gpushim was built without zstd; decompress with `zstd -d` first");
#endif
}

}  // namespace

bool compress_zstd(const std::vector<unsigned char>& in, std::vector<unsigned char>* out,
                   std::string* message) {
#ifdef GPUSHIM_HAVE_ZSTD
  // Level 19: traces are written once and read many times, and event records compress ~20x.
  constexpr int kLevel = 19;
  out->resize(ZSTD_compressBound(in.size()));
  std::size_t n = ZSTD_compress(out->data(), out->size(), in.data(), in.size(), kLevel);
  if (ZSTD_isError(n)) {
    *message = ZSTD_getErrorName(n);
    return false;
  }
  out->resize(n);
  return true;
#else
  (void)in;
  (void)out;
  *message = "this gpushim was built without zstd; use the zstd command";
  return false;
#endif
}

bool read_trace(const std::string& path, Trace* out, TraceError* error, const ReadProgress& progress) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return fail(error, 0, "cannot open the file");
  std::vector<unsigned char> raw((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) return fail(error, raw.size(), "read error");
  if (is_zstd(raw.data(), raw.size())) {
    std::vector<unsigned char> plain;
    if (!decompress_zstd(raw, &plain, error)) return false;
    bool ok = parse_trace(plain.data(), plain.size(), out, error, progress);
    out->compressed = true;
    if (!ok && error) error->message += " (offset is in the decompressed trace)";
    return ok;
  }
  return parse_trace(raw.data(), raw.size(), out, error, progress);
}

const char* event_kind_name(EventKind kind) {
  switch (kind) {
    case EventKind::alloc: return "alloc";
    case EventKind::free: return "free";
    case EventKind::alloc_async: return "alloc_async";
    case EventKind::free_async: return "free_async";
    case EventKind::alloc_failed: return "alloc_failed";
    case EventKind::cache_release: return "cache_release";
    case EventKind::out_of_memory: return "out_of_memory";
    case EventKind::map: return "map";
    case EventKind::unmap: return "unmap";
    case EventKind::spill_map: return "spill_map";
    case EventKind::spill_unmap: return "spill_unmap";
  }
  return "unknown";
}

const char* backend_name(BackendId backend) {
  switch (backend) {
    case BackendId::passthrough: return "passthrough";
    case BackendId::vmm: return "vmm";
    case BackendId::buddy: return "buddy";
    case BackendId::slab: return "slab";
    case BackendId::mempool: return "mempool";
    case BackendId::tiered: return "tiered";
    case BackendId::unknown: return "unknown";
  }
  return "unknown";
}

}  // namespace gpushim::tracing
