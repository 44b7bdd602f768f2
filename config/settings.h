// Every gpushim setting, parsed once from the environment (mimalloc's options.c).
// The table of rows (name, type, default, accepted values, help) lives in settings.cpp; the same table
// validates input, prints `gpushim --help` and the settings section of README.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/fault_spec.h"

namespace gpushim {

// The defaults of the settings whose 0 is a value ("give back at once"), so Settings holds them
// itself rather than 0 for "not set"; the arena's options default to them too. allocators/vmm_arena.h
// says why these values.
inline constexpr std::uint64_t kDefaultVmmReleaseThreshold = std::uint64_t{8} << 30;
inline constexpr std::uint64_t kDefaultVmmReleaseDelayNs = 1'000'000'000;
// GPUSHIM_STREAM_LIST_IDLE's (router/router_state.h, StreamListAges); 0 is a value there too. The trace
// replay's model of the router ages lists by it.
inline constexpr std::uint64_t kDefaultStreamListIdleNs = 1'000'000'000;

enum class LogLevel { quiet, warn, info, debug };

// A size written as users write it: "512MiB", "2GB", "4096", or a share of the device: "80%".
struct SizeSetting {
  std::uint64_t bytes = 0;  // when percent == 0
  double percent = 0;       // (0, 100] when the value was written with '%'
  bool set() const { return bytes != 0 || percent != 0; }
  // Resolves against the device's total memory.
  std::uint64_t resolve(std::uint64_t device_total) const;
};

// The deepest call stack GPUSHIM_TRACE_STACK may ask for: deeper stacks cost more than they tell.
// The one limit: the setting's parser rejects more, and the recorder and unwinder size buffers by it
// (the trace format stores a record's frame count in one byte; trace_recorder.cpp checks it fits).
constexpr int kMaxTraceStack = 64;

// Device ordinals a setting may name (GPUSHIM_PEERS): gpushim's per-device tables hold 64 devices
// (router/router_state.h), so a larger number is a typo whatever the machine. Whether a device exists
// is known only to the driver: `gpushim check` asks it.
constexpr int kMaxDeviceOrdinal = 63;

struct Settings {
  std::string backend;                 // GPUSHIM_BACKEND: passthrough, vmm, buddy, slab, mempool, tiered
  bool stats = false;                  // GPUSHIM_STATS
  LogLevel log = LogLevel::warn;       // GPUSHIM_LOG: quiet, warn, info, debug
  bool strict = false;                 // GPUSHIM_STRICT: a bad value is fatal
  SizeSetting limit;                   // GPUSHIM_LIMIT: per-process, per-device cap
  // GPUSHIM_FREE_FENCE: when a cudaFree'd block may be reused (docs/free-safety.md). automatic: at once
  // while the work is ordered or one non-blocking stream carries it alone (solo); no_solo: not beside a
  // lone stream; always: after a fence, even in a stream-less program.
  enum class FreeFence { automatic, no_solo, always };
  FreeFence free_fence = FreeFence::automatic;
  std::uint64_t fence_delay_ns = 0;    // GPUSHIM_FENCE_DELAY: a closed batch's wait for its fence
  // GPUSHIM_THREAD_FENCES: a cudaFree'd batch closed while streams work stays with its thread, marked
  // (router/marked_batches.h), rather than waiting in the fence queue for events.
  bool thread_fences = true;
  // GPUSHIM_STREAM_LIST_IDLE: how long a quiet stream's async free list keeps its blocks.
  std::uint64_t stream_list_idle_ns = kDefaultStreamListIdleNs;
  // GPUSHIM_DIRECT_CUDART: a shared libcudart's cudaMalloc/cudaFree (and the Async pair) served without
  // entering the runtime (shim/runtime_entry_points.cpp).
  bool direct_cudart = true;

  // vmm arena
  std::uint64_t vmm_reserve = 0;       // GPUSHIM_VMM_RESERVE: address space reserved per device
  std::uint64_t vmm_grow_step = 0;     // GPUSHIM_VMM_GROW_STEP: physical memory mapped per growth
  // GPUSHIM_VMM_RELEASE_THRESHOLD: idle bytes kept mapped (0: give back all idle memory).
  std::uint64_t vmm_release_threshold = kDefaultVmmReleaseThreshold;
  // GPUSHIM_VMM_RELEASE_DELAY: how long memory above the threshold stays idle before it goes back.
  std::uint64_t vmm_release_delay_ns = kDefaultVmmReleaseDelayNs;
  int arena_shards = 0;  // GPUSHIM_ARENA_SHARDS: arenas a contended device splits into (0: the default)
  // GPUSHIM_LARGE_SLOTS: when the per-thread exact-size slots above 1 MiB keep freed blocks.
  enum class LargeSlots { while_contended, always, never };
  LargeSlots large_slots = LargeSlots::while_contended;

  // other backends
  std::uint64_t buddy_region = 0;      // GPUSHIM_BUDDY_REGION: size of one buddy region
  std::uint64_t slab_max_size = 0;     // GPUSHIM_SLAB_MAX_SIZE: largest size the slab serves
  std::uint64_t tiered_split = 0;      // GPUSHIM_TIERED_SPLIT: sizes up to this go to the slab
  std::uint64_t mempool_release_threshold = 0;  // GPUSHIM_MEMPOOL_RELEASE_THRESHOLD

  // tracing
  std::string trace_path;              // GPUSHIM_TRACE: %p = pid, %r = rank
  int trace_stack = 0;                 // GPUSHIM_TRACE_STACK: return addresses per allocation

  // out of memory (docs/oom-dump.md)
  std::string oom_dump_path;           // GPUSHIM_OOM_DUMP: %p = pid, %r = rank
  int oom_dump_stack = 0;              // GPUSHIM_OOM_DUMP_STACK: return addresses per live block
  FaultSpec fail;                      // GPUSHIM_FAIL

  // peers
  std::string peers;                   // GPUSHIM_PEERS: "", "all", "0,1,..."
  std::string placement;               // GPUSHIM_PLACEMENT: local, interleave, spill

  // host spill (docs/host-spill.md)
  bool spill_host = false;             // GPUSHIM_SPILL: "host" serves what the device cannot from host memory
  SizeSetting spill_limit;             // GPUSHIM_SPILL_LIMIT: host memory spilled per device (% of host RAM)

  // Human-readable problems found while parsing, one line each, already printed once.
  std::vector<std::string> errors;
};

// Parsed on first use from the process environment; thread-safe; never allocates on later calls.
const Settings& settings();

// For tests and the `gpushim` command: parse from an explicit lookup instead of getenv.
using EnvLookup = const char* (*)(const char* name, void* user);
Settings parse_settings(EnvLookup lookup, void* user);

// Row of the settings table, for `gpushim --help` and docs.
struct SettingRow {
  const char* variable;   // "GPUSHIM_BACKEND"
  const char* type;       // "choice", "bool", "size", "size-or-percent", "path", "int", "list", "faults"
  const char* default_value;
  const char* accepted;   // "passthrough|vmm|..." or a description of the accepted form
  const char* help;
};
const std::vector<SettingRow>& setting_rows();
// The table's own check of one value, as parse_settings applies it: for anything else that takes a
// setting's value (the `gpushim run` options). Null when the value is accepted, else the row (its
// `accepted` text says what would be); an unknown variable is never accepted.
const SettingRow* setting_value_rejected_by(const char* variable, const char* value);

// What an accepted value means, in the words `gpushim check` prints: the choice as gpushim spells it
// ("VMM" -> "vmm"), a size in bytes and binary units, a bool as on/off. Judged by the row's type, so a
// row added to the table is described without more code; the value as written for types without a
// normal form. Empty value: the row's default.
std::string setting_value_meaning(const SettingRow& row, const char* value);

// Formats a byte count as "1.50 GiB" into buf (at least 32 bytes); parse_size's inverse, for messages.
// Returns buf.
const char* format_bytes(unsigned long long bytes, char* buf, unsigned long size);
// Parses "512MiB", "2GB", "1.5GiB", "4096", "64k"; false on a malformed value.
bool parse_size(const char* text, std::uint64_t* bytes);
// Parses a size or "80%".
bool parse_size_or_percent(const char* text, SizeSetting* out);
// Parses "1.5s", "500ms", "100us", "250ns", "3m" into nanoseconds; a bare number is seconds.
bool parse_duration(const std::string& text, std::uint64_t* ns);

}  // namespace gpushim
