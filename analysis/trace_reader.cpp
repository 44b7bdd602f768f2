#include "analysis/trace_reader.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <utility>

#include "config/settings.h"

#ifdef GPUSHIM_HAVE_ZSTD
#include <zstd.h>
#endif

namespace gpushim::tracing {
namespace {

constexpr std::uint8_t kLastKnownEventKind = std::uint8_t(EventKind::spill_unmap);
// Progress is reported every this many bytes, so a multi-GiB trace shows movement without the
// callback costing anything on small ones.
constexpr std::uint64_t kProgressStep = 16ull << 20;
// Reads from a file or pipe in pieces this big.
constexpr std::size_t kReadPiece = 1u << 20;

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

// What parsing carries from one chunk to the next.
struct ParseState {
  std::map<std::pair<std::uint64_t, std::string>, std::size_t> module_index;
  bool saw_end = false;
  std::uint64_t allocated = 0;  // sums of sizes, kept below format::kMaxTotalBytes
  std::uint64_t mapped = 0;
};

// Sizes of events that describe memory someone holds; a failed request may ask for anything.
bool size_is_held_memory(EventKind kind) {
  return kind != EventKind::alloc_failed && kind != EventKind::out_of_memory;
}

// The checks an event's fields get before anything sizes or indexes by them. Empty when it is fine.
std::string check_event(const format::EventRecord& rec, ParseState* state) {
  if (rec.kind == 0 || rec.kind > kLastKnownEventKind) return "unknown event kind " + std::to_string(rec.kind);
  if (rec.frame_count > kMaxTraceStack)
    return "event has " + std::to_string(rec.frame_count) + " stack frames; the recorder writes at most " +
           std::to_string(kMaxTraceStack);
  if (rec.device < format::kNoDevice || rec.device > format::kMaxDeviceOrdinal)
    return "device number " + std::to_string(rec.device) + " is impossible (accepted: " +
           std::to_string(format::kNoDevice) + " to " + std::to_string(format::kMaxDeviceOrdinal) + ")";
  EventKind kind = EventKind(rec.kind);
  if (!size_is_held_memory(kind)) return {};
  if (rec.size > format::kMaxBlockBytes)
    return "size " + std::to_string(rec.size) + " is larger than any address space (at most " +
           std::to_string(format::kMaxBlockBytes) + " bytes)";
  if ((is_alloc(kind) || kind == EventKind::map) && rec.address + rec.size < rec.address)
    return "block at " + std::to_string(rec.address) + " of " + std::to_string(rec.size) +
           " bytes runs past the end of the address space";
  std::uint64_t* total = is_alloc(kind) ? &state->allocated : kind == EventKind::map ? &state->mapped : nullptr;
  if (total) {
    *total += rec.size;  // both below 2^62 + 2^48: no wrap
    if (*total > format::kMaxTotalBytes)
      return std::string(is_alloc(kind) ? "allocations" : "mappings") + " add up to more than " +
             std::to_string(format::kMaxTotalBytes) + " bytes";
  }
  return {};
}

// Parses the records of one chunk whose checksum already matched. `base` is the payload's file offset.
bool parse_chunk(const unsigned char* p, std::uint32_t bytes, std::uint64_t base,
                 const format::ChunkHeader& chunk, std::uint64_t start_ns, Trace* out,
                 ParseState* state, TraceError* error) {
  std::uint32_t records = 0;
  std::size_t at = 0;
  while (at < bytes) {
    std::uint64_t offset = base + at;
    if (state->saw_end) return fail(error, offset, "records after the end-of-trace record");
    auto type = format::RecordType(p[at]);
    if (type == format::RecordType::event) {
      if (bytes - at < sizeof(format::EventRecord))
        return fail(error, offset, "event record cut short inside its chunk");
      format::EventRecord rec;
      std::memcpy(&rec, p + at, sizeof rec);
      std::size_t need = sizeof rec + 8 * std::size_t(rec.frame_count);
      if (bytes - at < need) return fail(error, offset, "event record's stack runs past its chunk");
      std::string problem = check_event(rec, state);
      if (!problem.empty()) return fail(error, offset, problem);
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
      if (!state->module_index.count(key)) {
        state->module_index[key] = out->modules.size();
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
      state->saw_end = true;
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

namespace {

// Checks the 64-byte file header; `bytes` is the whole trace's size.
bool check_header(const format::FileHeader& h, std::size_t bytes, TraceError* error) {
  if (std::memcmp(h.magic, format::kMagic, sizeof h.magic) != 0)
    return fail(error, 0, "not a gpushim trace (wrong magic)");
  if (h.version > format::kVersion)
    return fail(error, 8, "trace format version " + std::to_string(h.version) +
                              " is newer than this tool reads (up to " +
                              std::to_string(format::kVersion) + "); use a newer gpushim");
  if (h.version == 0) return fail(error, 8, "trace format version 0 is invalid");
  if (h.version >= format::kFirstVersionWithHeaderChecksum) {
    if (format::header_checksum(h) != h.header_checksum)
      return fail(error, 0, "corrupted: the header's checksum does not match its 64 bytes");
  } else {
    // Version 1 has no checksum; its last 16 bytes were reserved and always written as zero.
    static const unsigned char zero[16] = {};
    if (std::memcmp(reinterpret_cast<const unsigned char*>(&h) + 48, zero, sizeof zero) != 0)
      return fail(error, 48, "corrupted: reserved header bytes are not zero");
  }
  if (h.header_bytes < sizeof(format::FileHeader) || h.header_bytes > format::kMaxHeaderBytes ||
      h.header_bytes > bytes)
    return fail(error, 12, "header size " + std::to_string(h.header_bytes) + " is invalid");
  if (h.rank < -1) return fail(error, 36, "rank " + std::to_string(h.rank) + " is invalid");
  if (h.stack_depth > std::uint32_t(kMaxTraceStack))
    return fail(error, 40, "stack depth " + std::to_string(h.stack_depth) + " is more than the recorder writes (" +
                               std::to_string(kMaxTraceStack) + ")");
  if (h.flags & ~format::kKnownHeaderFlags)
    return fail(error, 44, "unknown header flags " + std::to_string(h.flags));
  return true;
}

}  // namespace

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
  if (!check_header(h, bytes, error)) return false;

  ParseState state;
  std::uint64_t next_progress = kProgressStep;
  std::size_t at = h.header_bytes;
  while (at < bytes) {
    // The file stops inside a chunk: keep what came before (a half-copied file is worth reading).
    if (bytes - at < sizeof(format::ChunkHeader)) {
      out->truncated = true;
      out->truncated_at = at;
      break;
    }
    format::ChunkHeader chunk;
    std::memcpy(&chunk, data + at, sizeof chunk);
    if (std::memcmp(chunk.magic, format::kChunkMagic, sizeof chunk.magic) != 0)
      return fail(error, at, "corrupted: no chunk starts here");
    if (chunk.payload_bytes % 8 != 0 || chunk.payload_bytes > format::kMaxChunkPayload)
      return fail(error, at, "corrupted: impossible chunk size " + std::to_string(chunk.payload_bytes));
    if (bytes - at - sizeof chunk < chunk.payload_bytes) {
      // A cut file ends here; a damaged size field leaves whole chunks after it. Chunks start 8-aligned.
      for (std::size_t next = at + 8; next + sizeof format::kChunkMagic <= bytes; next += 8)
        if (std::memcmp(data + next, format::kChunkMagic, sizeof format::kChunkMagic) == 0)
          return fail(error, at, "corrupted: chunk size " + std::to_string(chunk.payload_bytes) +
                                     " runs past the end of the file, yet a chunk starts at byte " +
                                     std::to_string(next));
      out->truncated = true;
      out->truncated_at = at;
      break;
    }
    const unsigned char* payload = data + at + sizeof chunk;
    if (format::chunk_checksum(chunk.thread_id, chunk.record_count, payload, chunk.payload_bytes) !=
        chunk.checksum)
      return fail(error, at, "corrupted: the chunk's checksum does not match its contents");
    if (!parse_chunk(payload, chunk.payload_bytes, at + sizeof chunk, chunk, h.start_monotonic_ns, out,
                     &state, error))
      return false;
    at += sizeof chunk + chunk.payload_bytes;
    if (progress && at >= next_progress) {
      progress(ReadStage::parsing, at, bytes);
      next_progress = at + kProgressStep;
    }
  }
  out->clean_end = state.saw_end;
  // One thread's events are in order; chunks of different threads interleave.
  std::stable_sort(out->events.begin(), out->events.end(),
                   [](const TraceEvent& a, const TraceEvent& b) { return a.time_ns < b.time_ns; });
  std::sort(out->modules.begin(), out->modules.end(),
            [](const TraceModule& a, const TraceModule& b) { return a.base < b.base; });
  if (progress) progress(ReadStage::parsing, bytes, bytes);
  return true;
}

bool is_zstd(const unsigned char* data, std::size_t bytes) {
  return bytes >= 4 && data[0] == 0x28 && data[1] == 0xB5 && data[2] == 0x2F && data[3] == 0xFD;
}

std::uint64_t ReadLimits::default_max_trace_bytes() {
  constexpr std::uint64_t kAtLeast = 256ull << 20;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return kAtLeast;
  return std::max(kAtLeast, std::uint64_t(pages) * std::uint64_t(page) / 4);
}

namespace {

// Where a decompressed trace is certainly not a trace, stop inflating it: a zstd bomb of zeros or
// random bytes is found after its first bytes, not after gigabytes. `checked` is where the next chunk
// header starts (advanced as whole chunks arrive). True while the bytes so far may still be a trace.
bool may_be_trace(const std::vector<unsigned char>& plain, std::size_t* checked) {
  if (plain.empty()) return true;
  if (*checked == 0) {
    if (plain.size() < sizeof(format::FileHeader))
      return std::memcmp(plain.data(), format::kMagic, std::min(plain.size(), sizeof format::kMagic)) == 0;
    format::FileHeader h;
    std::memcpy(&h, plain.data(), sizeof h);
    if (!check_header(h, SIZE_MAX, nullptr)) return false;
    if (h.header_bytes > plain.size()) return true;  // the rest of a longer header is still to come
    *checked = h.header_bytes;
  }
  while (plain.size() - *checked >= sizeof(format::ChunkHeader)) {
    format::ChunkHeader chunk;
    std::memcpy(&chunk, plain.data() + *checked, sizeof chunk);
    if (std::memcmp(chunk.magic, format::kChunkMagic, sizeof chunk.magic) != 0 ||
        chunk.payload_bytes % 8 != 0 || chunk.payload_bytes > format::kMaxChunkPayload)
      return false;
    *checked += sizeof chunk + chunk.payload_bytes;
    if (*checked > plain.size()) {
      *checked -= sizeof chunk + chunk.payload_bytes;
      break;
    }
  }
  return true;
}

// Inflates `in` into `out`, at most `limit` bytes. A stream cut short is not an error: `out` holds what
// came before the cut and *truncated is set.
bool decompress_zstd(const std::vector<unsigned char>& in, std::vector<unsigned char>* out,
                     std::uint64_t limit, bool* truncated, TraceError* error, const ReadProgress& progress) {
#ifdef GPUSHIM_HAVE_ZSTD
  ZSTD_DStream* stream = ZSTD_createDStream();
  if (!stream) return fail(error, 0, "zstd: out of memory");
  // A frame that announces its size more than the limit is refused before anything is inflated.
  unsigned long long announced = ZSTD_getFrameContentSize(in.data(), in.size());
  if (announced != ZSTD_CONTENTSIZE_UNKNOWN && announced != ZSTD_CONTENTSIZE_ERROR && announced > limit) {
    ZSTD_freeDStream(stream);
    return fail(error, 0, "the compressed trace would inflate to " + std::to_string(announced) +
                              " bytes, more than the " + std::to_string(limit) + " this tool holds");
  }
  std::vector<unsigned char> buffer(ZSTD_DStreamOutSize());
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  std::size_t last = 0, checked = 0;
  std::uint64_t next_progress = kProgressStep;
  bool ok = true;
  for (;;) {
    ZSTD_outBuffer output{buffer.data(), buffer.size(), 0};
    last = ZSTD_decompressStream(stream, &output, &input);
    if (ZSTD_isError(last)) {
      ok = fail(error, input.pos, std::string("corrupted zstd data: ") + ZSTD_getErrorName(last) +
                                      " (offset is in the compressed file)");
      break;
    }
    if (out->size() + output.pos > limit) {
      ok = fail(error, out->size(), "the compressed trace inflates to more than " + std::to_string(limit) +
                                        " bytes, the most this tool holds (a zstd bomb?)");
      break;
    }
    out->insert(out->end(), buffer.begin(), buffer.begin() + output.pos);
    if (!may_be_trace(*out, &checked)) break;  // parse_trace names the damage and its offset
    if (progress && out->size() >= next_progress) {
      progress(ReadStage::decompressing, out->size(), in.size());
      next_progress = out->size() + kProgressStep;
    }
    // All input consumed and the decoder had no more to give: done.
    if (input.pos == input.size && output.pos < output.size) {
      *truncated = last != 0;
      break;
    }
  }
  ZSTD_freeDStream(stream);
  return ok;
#else
  (void)in;
  (void)out;
  (void)limit;
  (void)truncated;
  (void)progress;
  return fail(error, 0, "this gpushim was built without zstd; decompress with `zstd -d` first");
#endif
}

std::string errno_text(int code) { return std::strerror(code); }

// Reads all of `fd` into `out`, at most `limit` bytes. For a pipe, waits at most `idle_ms` for each
// piece.
bool read_all(int fd, bool pipe, std::uint64_t limit, int idle_ms, std::vector<unsigned char>* out,
              TraceError* error, const ReadProgress& progress, std::uint64_t expected) {
  std::uint64_t next_progress = kProgressStep;
  for (;;) {
    if (pipe) {
      pollfd p{fd, POLLIN, 0};
      int ready;
      do {
        ready = ::poll(&p, 1, idle_ms);
      } while (ready < 0 && errno == EINTR);
      if (ready == 0)
        return fail(error, out->size(), "no data from the pipe for " + std::to_string(idle_ms / 1000) +
                                            " s (a FIFO nobody writes to?)");
      if (ready < 0) return fail(error, out->size(), "read error: " + errno_text(errno));
    }
    std::size_t old = out->size();
    std::size_t want = std::size_t(std::min<std::uint64_t>(kReadPiece, limit + 1 - old));
    // A file of known size is read in pieces that fit it (plus one byte, to see the end).
    if (expected > old) want = std::size_t(std::min<std::uint64_t>(want, expected + 1 - old));
    out->resize(old + want);
    ssize_t n = ::read(fd, out->data() + old, want);
    if (n < 0) {
      out->resize(old);
      if (errno == EINTR || errno == EAGAIN) continue;
      return fail(error, old, "read error: " + errno_text(errno));
    }
    out->resize(old + std::size_t(n));
    if (n == 0) return true;
    if (out->size() > limit)
      return fail(error, limit, "the file is larger than " + std::to_string(limit) +
                                    " bytes, the most this tool holds");
    if (progress && out->size() >= next_progress) {
      progress(ReadStage::reading, out->size(), expected);
      next_progress = out->size() + kProgressStep;
    }
  }
}

}  // namespace

bool read_file_bytes(const std::string& path, std::vector<unsigned char>* out, TraceError* error,
                     const ReadProgress& progress, const ReadLimits& limits) {
  out->clear();
  // O_NONBLOCK: opening a FIFO with no writer would otherwise block before any timeout can apply.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return fail(error, 0, "cannot open the file: " + errno_text(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int code = errno;
    ::close(fd);
    return fail(error, 0, "cannot stat the file: " + errno_text(code));
  }
  const char* refusal = S_ISDIR(st.st_mode)                         ? "it is a directory, not a trace file"
                        : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "it is a device, not a trace file"
                        : !S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode)
                            ? "it is not a regular file or a pipe"
                            : nullptr;
  if (refusal) {
    ::close(fd);
    return fail(error, 0, refusal);
  }
  const bool pipe = !S_ISREG(st.st_mode);
  if (!pipe && std::uint64_t(st.st_size) > limits.max_trace_bytes) {
    ::close(fd);
    return fail(error, limits.max_trace_bytes, "the file is larger than " +
                                                   std::to_string(limits.max_trace_bytes) +
                                                   " bytes, the most this tool holds");
  }
  if (!pipe) {
    // Regular files block on nothing; reads may then wait for the disk like any read.
    int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  }
  bool ok = read_all(fd, pipe, limits.max_trace_bytes, limits.pipe_idle_timeout_ms, out, error, progress,
                     pipe ? 0 : std::uint64_t(st.st_size));
  ::close(fd);
  return ok;
}

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

bool read_trace(const std::string& path, Trace* out, TraceError* error, const ReadProgress& progress,
                const ReadLimits& limits) {
  *out = Trace{};
  std::vector<unsigned char> raw;
  if (!read_file_bytes(path, &raw, error, progress, limits)) return false;
  if (is_zstd(raw.data(), raw.size())) {
    std::vector<unsigned char> plain;
    bool cut = false;
    if (!decompress_zstd(raw, &plain, limits.max_trace_bytes, &cut, error, progress)) return false;
    raw = {};  // the compressed bytes are not needed any more
    bool ok = parse_trace(plain.data(), plain.size(), out, error, progress);
    out->compressed = true;
    if (!ok && error) error->message += " (offset is in the decompressed trace)";
    if (ok && cut && !out->truncated) {
      out->truncated = true;
      out->truncated_at = plain.size();
    }
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
