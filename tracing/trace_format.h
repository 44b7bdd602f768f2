// The on-disk layout of a gpushim trace, shared by the recorder (inside libgpushim.so) and the reader
// (the `gpushim trace` tools). Documented for humans in docs/trace-format.md; change both together.
//
// A trace is a file header followed by chunks. Each chunk is one flushed per-thread buffer: a chunk
// header, then records. A chunk is written with one write(2) under the file lock, so a crash or kill
// leaves every chunk before the last one whole, and the reader stops cleanly at the first damaged one.
// All integers are little-endian (the only byte order gpushim runs on: x86-64 and aarch64 Linux).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace gpushim::tracing::format {

inline constexpr char kMagic[8] = {'G', 'P', 'U', 'S', 'H', 'T', 'R', 'C'};
// Bump on any change an older reader would misread. Readers refuse newer versions (exit code 2).
// Version 2 added the header checksum; readers still accept version 1 (no checksum, reserved zero).
inline constexpr std::uint32_t kVersion = 2;
inline constexpr std::uint32_t kFirstVersionWithHeaderChecksum = 2;

struct FileHeader {                    // 64 bytes at offset 0
  char magic[8];                       // kMagic
  std::uint32_t version;               // kVersion
  std::uint32_t header_bytes;          // sizeof(FileHeader); lets a later version grow the header
  std::uint64_t start_monotonic_ns;    // CLOCK_MONOTONIC when recording started (event times are absolute)
  std::uint64_t start_realtime_ns;     // CLOCK_REALTIME at the same moment, to print wall-clock dates
  std::uint32_t pid;
  std::int32_t rank;                   // -1 when no launcher set a rank
  std::uint32_t stack_depth;           // GPUSHIM_TRACE_STACK in effect (0: no stacks)
  std::uint32_t flags;                 // kFlag* below
  std::uint64_t header_checksum;       // version >= 2: header_checksum() of this header; version 1: zero
  std::uint8_t reserved[8];
};
static_assert(sizeof(FileHeader) == 64, "FileHeader is part of the file format");
static_assert(offsetof(FileHeader, header_checksum) == 48, "FileHeader is part of the file format");

// A header longer than this is damage: no version needs more room before its first chunk.
inline constexpr std::uint32_t kMaxHeaderBytes = 4096;

inline constexpr std::uint32_t kFlagNoUnwinder = 1;  // stacks were asked for but no unwinder worked
// An out-of-memory dump (GPUSHIM_OOM_DUMP, docs/oom-dump.md), not a recording: one alloc event per block
// live at the failure (its allocation time, stream, size, stack), a device_state record per device,
// and last the out_of_memory event of the failing request.
inline constexpr std::uint32_t kFlagOomDump = 2;
// A reader refuses a header with any other bit set (a flipped bit, or a newer writer it cannot follow).
inline constexpr std::uint32_t kKnownHeaderFlags = kFlagNoUnwinder | kFlagOomDump;

inline constexpr char kChunkMagic[4] = {'G', 'T', 'C', 'K'};

struct ChunkHeader {                   // 24 bytes, 8-aligned
  char magic[4];                       // kChunkMagic
  std::uint32_t payload_bytes;         // bytes of records after this header (a multiple of 8)
  std::uint32_t thread_id;             // gettid() of the thread whose buffer this was (0: no thread)
  std::uint32_t record_count;
  std::uint64_t checksum;              // chunk_checksum() of this header and the payload
};
static_assert(sizeof(ChunkHeader) == 24, "ChunkHeader is part of the file format");

// A chunk never exceeds this; a larger payload_bytes means a damaged file, not a huge allocation.
inline constexpr std::uint32_t kMaxChunkPayload = 16u << 20;

// Limits on event fields a reader enforces: beyond them a field is damage (or a hostile file), and
// letting it through would size an allocation or overflow a sum.
inline constexpr std::int32_t kNoDevice = -1;            // an event that concerns no device
inline constexpr std::int32_t kMaxDeviceOrdinal = 1023;  // CUDA numbers a node's devices 0..N-1, N small
// No block can be larger than the 48-bit virtual address space of x86-64 and aarch64.
inline constexpr std::uint64_t kMaxBlockBytes = 1ull << 48;
// Allocated (and mapped) bytes summed over a whole trace: 4 EiB is a century at 1 TB/s, and keeps
// every sum a tool forms from them (live, freed, per site) clear of 2^64.
inline constexpr std::uint64_t kMaxTotalBytes = 1ull << 62;

enum class RecordType : std::uint8_t {
  event = 1,   // EventRecord followed by frame_count return addresses (u64 each)
  module = 2,  // ModuleRecord followed by path bytes and build-id bytes, padded to 8
  end = 3,     // EndRecord: the trace was closed cleanly (absent after a crash)
  device_state = 4,  // DeviceStateRecord: what one device held at the moment of an OOM dump
};

struct EventRecord {                   // 40 bytes + 8 per frame
  std::uint8_t type;                   // RecordType::event
  std::uint8_t kind;                   // tracing::EventKind
  std::uint8_t backend;                // tracing::BackendId
  std::uint8_t frame_count;            // return addresses that follow, innermost first
  std::int32_t device;
  std::uint64_t time_ns;               // CLOCK_MONOTONIC
  std::uint64_t stream;
  std::uint64_t address;
  std::uint64_t size;
};
static_assert(sizeof(EventRecord) == 40, "EventRecord is part of the file format");

struct ModuleRecord {                  // 24 bytes + path + build id, padded to 8
  std::uint8_t type;                   // RecordType::module
  std::uint8_t build_id_bytes;         // 0 when the module has no NT_GNU_BUILD_ID note
  std::uint16_t path_bytes;            // not NUL-terminated; "" is the main program on some systems
  std::uint32_t reserved;
  std::uint64_t base;                  // dlpi_addr: frame address - base = address inside the ELF file
  std::uint64_t end;                   // highest loaded address + 1 (for frame -> module lookup)
};
static_assert(sizeof(ModuleRecord) == 24, "ModuleRecord is part of the file format");

struct EndRecord {                     // 8 bytes
  std::uint8_t type;                   // RecordType::end
  std::uint8_t reserved[7];
};
static_assert(sizeof(EndRecord) == 8, "EndRecord is part of the file format");

struct DeviceStateRecord {             // 72 bytes
  std::uint8_t type;                   // RecordType::device_state
  std::uint8_t backend;                // tracing::BackendId
  std::uint8_t reserved[2];
  std::int32_t device;
  std::uint64_t live_bytes;            // requested sizes of the live blocks
  std::uint64_t live_blocks;
  std::uint64_t reserved_bytes;        // what the backend holds from the driver
  std::uint64_t cached_bytes;          // held, free, reusable
  std::uint64_t largest_free;          // the largest block the backend could hand out at once
  std::uint64_t pending_free;          // freed by the program, waiting for a fence
  std::uint64_t limit;                 // GPUSHIM_LIMIT in bytes; 0 = none
  std::uint64_t failed_request;        // bytes the failing request asked for on this device; 0 = none
};
static_assert(sizeof(DeviceStateRecord) == 72, "DeviceStateRecord is part of the file format");

inline constexpr std::size_t pad8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }

// Detects torn and flipped bytes in a chunk. Not cryptographic: a multiply-rotate over 8-byte words,
// about 1 ns per word, so checking a 64 KiB buffer costs ~10 ns per event at flush time.
inline std::uint64_t payload_checksum(const void* data, std::size_t bytes) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ bytes;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h ^= w;
    h = (h << 31) | (h >> 33);
    h *= 0x87C37B91114253D5ull;
  }
  std::uint64_t tail = 0;
  std::memcpy(&tail, p + (bytes & ~std::size_t{7}), bytes & 7);
  h ^= tail;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 32);
}

// Covers every byte of the file header (pid, times, rank, stack depth, flags included) except the
// checksum field itself, which counts as zero. Computed once per trace, so its cost does not matter.
inline std::uint64_t header_checksum(const FileHeader& header) {
  FileHeader copy = header;
  copy.header_checksum = 0;
  return payload_checksum(&copy, sizeof copy) ^ 0x48454144u;  // "HEAD": differs from a chunk's hash
}

// Covers the payload and the header fields a flip could otherwise change unnoticed.
inline std::uint64_t chunk_checksum(std::uint32_t thread_id, std::uint32_t record_count,
                                    const void* payload, std::size_t bytes) {
  std::uint64_t fields = (std::uint64_t(thread_id) << 32) | record_count;
  return payload_checksum(payload, bytes) ^ (fields * 0x9E3779B97F4A7C15ull);
}

}  // namespace gpushim::tracing::format
