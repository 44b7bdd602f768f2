// One table of rows drives everything about a setting: how it is parsed and validated, its default,
// and what `gpushim --help` / README.md say about it (mimalloc's options.c). A bad value is reported
// in one line that names the variable and what it accepts; the process then runs on passthrough (the
// real driver), or stops when GPUSHIM_STRICT=1.
#include "config/settings.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "config/printable.h"

namespace gpushim {
namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t GiB = 1024 * MiB;

// The VMM granularity measured on the H100 (docs/measured-facts.md). Mapping less than this is impossible, so a
// reserve or growth step below it is a typo, not a choice.
constexpr std::uint64_t kMinMappingSize = 2 * MiB;
// cudaMalloc's alignment: no block is smaller than this, so a smaller size bound means nothing.
constexpr std::uint64_t kMinBlockSize = 256;

bool equals_ignoring_case(const char* a, const char* b) {
  for (; *a && *b; ++a, ++b) {
    char x = *a, y = *b;
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return *a == *b;
}

bool parse_bool(const char* text, bool* out) {
  static const char* const kTrue[] = {"1", "true", "yes", "on"};
  static const char* const kFalse[] = {"0", "false", "no", "off"};
  for (const char* word : kTrue)
    if (equals_ignoring_case(text, word)) return *out = true, true;
  for (const char* word : kFalse)
    if (equals_ignoring_case(text, word)) return *out = false, true;
  return false;
}

// Finds `text` among the words of a ", "-separated list ("local, interleave, spill"), ignoring case as
// every choice of the table does, and returns the listed spelling (what the rest of gpushim compares
// against), or "" when it is not there.
std::string listed_word(const char* text, const char* list) {
  const std::size_t length = std::strlen(text);
  if (length == 0) return {};
  for (const char* item = list; *item;) {
    const char* end = std::strchr(item, ',');
    const std::size_t item_length = end ? static_cast<std::size_t>(end - item) : std::strlen(item);
    if (item_length == length && equals_ignoring_case(std::string(item, item_length).c_str(), text))
      return std::string(item, item_length);
    if (!end) break;
    item = end + 1;
    while (*item == ' ') ++item;
  }
  return {};
}

// "12", "1.5", ".5": digits with an optional fraction; advances `c` past them.
// Hand-written rather than strtod: strtod follows the program's locale, and a program that called
// setlocale(LC_ALL, "") in a decimal-comma locale would read "1.5GiB" as 1 GiB.
bool parse_decimal(const char*& c, long double* value) {
  long double result = 0;
  bool digits = false;
  for (; *c >= '0' && *c <= '9'; ++c, digits = true) result = result * 10 + (*c - '0');
  if (*c == '.') {
    long double scale = 0.1L;
    for (++c; *c >= '0' && *c <= '9'; ++c, digits = true, scale /= 10) result += scale * (*c - '0');
  }
  *value = result;
  return digits;
}

bool size_at_least(const char* text, std::uint64_t minimum, std::uint64_t* out) {
  std::uint64_t bytes = 0;
  if (!parse_size(text, &bytes) || bytes < minimum) return false;
  *out = bytes;
  return true;
}

// A time with its unit (parse_duration) of at most `max_ns`: above it is a typo, not a setting.
bool duration_up_to(const char* text, std::uint64_t max_ns, std::uint64_t* out) {
  std::uint64_t ns = 0;
  if (!parse_duration(text, &ns) || ns > max_ns) return false;
  *out = ns;
  return true;
}

bool parse_log_level(const char* text, LogLevel* out) {
  static const struct { const char* name; LogLevel level; } kLevels[] = {
      {"quiet", LogLevel::quiet}, {"warn", LogLevel::warn},
      {"info", LogLevel::info},   {"debug", LogLevel::debug}};
  for (const auto& entry : kLevels)
    if (equals_ignoring_case(text, entry.name)) return *out = entry.level, true;
  return false;
}

// "all" (any case), or device ordinals separated by commas: "0,1,3", each at most kMaxDeviceOrdinal.
// Stores the list as the peer provider reads it ("all" in lower case). Whether the devices exist is known
// only once the driver runs: `gpushim check` asks it (tools/settings_check.cpp).
bool parse_device_list(const char* text, std::string* out) {
  if (equals_ignoring_case(text, "all")) return *out = "all", true;
  bool digit_seen = false;
  int ordinal = 0;
  for (const char* c = text; *c; ++c) {
    if (*c >= '0' && *c <= '9') {
      digit_seen = true;
      ordinal = ordinal * 10 + (*c - '0');
      if (ordinal > kMaxDeviceOrdinal) return false;
    } else if (*c == ',' && digit_seen) {
      digit_seen = false;
      ordinal = 0;
    } else {
      return false;
    }
  }
  if (!digit_seen) return false;
  *out = text;
  return true;
}

// A whole decimal number from 0 to `max` (GPUSHIM_TRACE_STACK's depth, GPUSHIM_ARENA_SHARDS).
bool parse_int_up_to(const char* text, int max, int* out) {
  int n = 0;
  for (const char* c = text; *c; ++c) {
    if (*c < '0' || *c > '9' || n > max) return false;
    n = n * 10 + (*c - '0');
  }
  if (*text == '\0' || n > max) return false;
  *out = n;
  return true;
}

// A row of the table: the public description plus how to store a value. `apply` returns false for a
// value it does not accept and then leaves the setting untouched.
struct Row {
  SettingRow text;
  bool (*apply)(const char* value, Settings& settings);
};

// Each choice's words, named once: the row shows them (the one line a bad value gets names them) and its
// parser accepts exactly them, so the two cannot drift apart.
// The backend names must equal backend_table() (allocators/backend_registry.cpp), in its order; config
// does not link the allocators, so tests/settings_backend_names_test.cpp checks that they agree.
constexpr char kBackendChoices[] = "tiered, vmm, buddy, slab, mempool, passthrough";
constexpr char kFreeFenceChoices[] = "auto, no-solo, always";
constexpr char kPlacementChoices[] = "local, interleave, spill";
constexpr char kSpillChoices[] = "off, host";
// Sizes are written in the defaults exactly as a user would write them: they go through the same parser.
const Row kRows[] = {
    {{"GPUSHIM_BACKEND", "choice", "tiered", kBackendChoices,
      "Which backend serves device allocations (`gpushim backends` describes each)."},
     [](const char* v, Settings& s) {
       std::string name = listed_word(v, kBackendChoices);
       if (name.empty()) return false;
       s.backend = name;
       return true;
     }},
    {{"GPUSHIM_STATS", "bool", "0", "0, 1 (also true/false, yes/no, on/off)",
      "Print a short table on stderr at exit: calls, bytes, peak live, peak reserved, per backend."},
     [](const char* v, Settings& s) { return parse_bool(v, &s.stats); }},
    {{"GPUSHIM_LOG", "choice", "warn", "quiet, warn, info, debug",
      "What gpushim prints on stderr. warn prints only warnings and errors; quiet prints nothing "
      "(not even a bad setting, unless GPUSHIM_STRICT stops the program)."},
     [](const char* v, Settings& s) { return parse_log_level(v, &s.log); }},
    {{"GPUSHIM_STRICT", "bool", "0", "0, 1 (also true/false, yes/no, on/off)",
      "Make a bad value of any GPUSHIM_ variable fatal: the line is printed and the process exits "
      "with status 1 (_exit: no atexit handlers run). Otherwise the process continues on passthrough."},
     [](const char* v, Settings& s) { return parse_bool(v, &s.strict); }},
    {{"GPUSHIM_LIMIT", "size-or-percent", "0",
      "a size (4096, 64k, 512MiB, 2GB, 1.5GiB) or a share of the device (80%); 0 = no cap",
      "Cap on the device memory this process may hold, per device. Over it an allocation fails with "
      "CUDA_ERROR_OUT_OF_MEMORY, and cuMemGetInfo reports the cap as total."},
     [](const char* v, Settings& s) { return parse_size_or_percent(v, &s.limit); }},
    {{"GPUSHIM_FREE_FENCE", "choice", "auto", kFreeFenceChoices,
      "When a block freed with cudaFree may be reused. auto: at once while only the legacy stream (and at "
      "most one blocking stream) carries work, whatever streams exist, or while one non-blocking stream "
      "carries work alone (solo: other work first waits for it); while other streams carry work, after a "
      "fence shows the GPU work issued before the free has finished (docs/free-safety.md); no-solo: as "
      "auto, but a lone non-blocking stream's frees are fenced too; always: after the fence, in every case."},
     [](const char* v, Settings& s) {
       std::string choice = listed_word(v, kFreeFenceChoices);
       if (choice.empty()) return false;
       s.free_fence = choice == "always"    ? Settings::FreeFence::always
                      : choice == "no-solo" ? Settings::FreeFence::no_solo
                                            : Settings::FreeFence::automatic;
       return true;
     }},
    {{"GPUSHIM_FENCE_DELAY", "duration", "200us", "a time (0, 50us, 1ms, up to 1s); 0 = at once",
      "While a side stream carries work, how long a batch of cudaFree'd blocks waits before gpushim "
      "records its fence: side-stream work that ends sooner gives the blocks back with no fence (a "
      "fence cost the freeing call 3-5 us on the H200). Allocations that would raise the peak record "
      "at once, and so does every free after a batch waited in vain, until the streams are next idle."},
     [](const char* v, Settings& s) { return duration_up_to(v, 1'000'000'000, &s.fence_delay_ns); }},
    {{"GPUSHIM_THREAD_FENCES", "bool", "1", "0, 1 (also true/false, yes/no, on/off)",
      "While side streams carry work and the legacy stream has none left, a batch of cudaFree'd blocks "
      "stays with the thread that freed it, marked with how many submissions each working stream had "
      "begun, and comes back to that thread once gpushim's stream polls have seen each stream finish "
      "them, while other streams go on working (docs/free-safety.md). 0: every such batch waits in the "
      "shared fence queue for events recorded on the streams, or for all streams to go idle."},
     [](const char* v, Settings& s) { return parse_bool(v, &s.thread_fences); }},
    {{"GPUSHIM_STREAM_LIST_IDLE", "duration", "1s", "a time (0, 100ms, 1s, up to 60s); 0 = at the next check",
      "How long blocks freed with cudaFreeAsync stay on their stream's free list, reusable at once on that "
      "stream, after the stream's last free (checked every 4,096 frees of a thread and after "
      "cudaDeviceSynchronize). Then they wait for a fence on every stream and go back to the backend, "
      "where any stream and the release threshold see them. Memory pressure and the stream's destruction "
      "close the list at once."},
     [](const char* v, Settings& s) { return duration_up_to(v, 60'000'000'000ull, &s.stream_list_idle_ns); }},
    {{"GPUSHIM_DIRECT_CUDART", "bool", "1", "0, 1 (also true/false, yes/no, on/off)",
      "The CUDA runtime's cudaMalloc, cudaFree, cudaMallocAsync and cudaFreeAsync are served by gpushim "
      "without entering the runtime, whose own code was half of a pair (~50 ns on the H200): a shared "
      "runtime's (libcudart.so: PyTorch, CuPy) through gpushim's exports of those names, and the "
      "program's static runtime (nvcc's default) by redirecting its functions to gpushim's at load "
      "(where the program is not stripped). Calls without a current context, of zero bytes or a null "
      "pointer still go through the runtime, and so do the errors, so that it reports them as usual "
      "(cudaGetLastError). 0: every call goes through the runtime."},
     [](const char* v, Settings& s) { return parse_bool(v, &s.direct_cudart); }},
    {{"GPUSHIM_VMM_RESERVE", "size", "256GiB", "a size >= 2MiB",
      "vmm: virtual address space reserved once per device; the arena never grows past it. "
      "Reserving costs no memory (1 TiB took 14 us on the H100)."},
     [](const char* v, Settings& s) { return size_at_least(v, kMinMappingSize, &s.vmm_reserve); }},
    {{"GPUSHIM_VMM_GROW_STEP", "size", "8MiB", "a size >= 2MiB (rounded up to the device granularity)",
      "vmm: physical memory mapped each time the arena grows. Larger steps mean fewer cuMemCreate/"
      "cuMemSetAccess calls (30-54 us each), smaller ones less idle memory."},
     [](const char* v, Settings& s) { return size_at_least(v, kMinMappingSize, &s.vmm_grow_step); }},
    {{"GPUSHIM_VMM_RELEASE_THRESHOLD", "size", "8GiB", "a size; 0 = give back all idle memory",
      "vmm: idle mapped memory kept per device; above it, idle mappings are given back to the driver. "
      "Free blocks kept in front of the arena (the thread caches, fenced frees back to their thread, tiered's "
      "empty slabs) count as idle at cudaDeviceSynchronize."},
     [](const char* v, Settings& s) { return parse_size(v, &s.vmm_release_threshold); }},
    {{"GPUSHIM_VMM_RELEASE_DELAY", "duration", "1s", "a time (0, 100ms, 1s, up to 60s); 0 = at once",
      "vmm: how long idle memory above GPUSHIM_VMM_RELEASE_THRESHOLD must stay idle before it is given back "
      "(above twice the threshold it goes at once). Checked in frees and after cudaDeviceSynchronize, not "
      "after a stream's or event's synchronization (a give-back waits for the whole device). Memory freed "
      "and taken again within it stays mapped: "
      "given back at once, one thread at 1 GiB with a stream, after 16 threads had held 16 GiB, unmapped "
      "and mapped 1 GiB ~700 times a second on the H200 (~2 ms a pair of calls)."},
     [](const char* v, Settings& s) { return duration_up_to(v, 60'000'000'000ull, &s.vmm_release_delay_ns); }},
    {{"GPUSHIM_ARENA_SHARDS", "int", "16", "1 to 16; 1 = one arena per device",
      "vmm and tiered: how many arenas a device's memory may be split into once threads keep finding the "
      "arena's lock held on allocations of changing sizes. Each thread that does moves to an arena of its "
      "own reservation (they share the device's peak and GPUSHIM_LIMIT), made when first taken; threads "
      "that each ask one size, and programs whose blocks come from one thread at a time, stay in one "
      "arena. A block of the first arena that a thread which left frees gives its free chunks back, so "
      "that thread's own arena grows in their place. 16 threads of mixed sizes with a stream each moved "
      "1.2-1.4 M pairs per second in one arena on the H200 and 18.6 M under 16 on tiered, at about 1.4x "
      "one arena's peak (3.1 against 2.2 GiB); one size per thread and PyTorch kept one arena's peak. 1: "
      "the least memory (docs/benchmarks.md)."},
     [](const char* v, Settings& s) {
       int n = 0;
       if (!parse_int_up_to(v, 16, &n) || n < 1) return false;
       s.arena_shards = n;
       return true;
     }},
    {{"GPUSHIM_LARGE_SLOTS", "choice", "auto", "auto, 1, 0 (also true/false, yes/no, on/off)",
      "Per-thread slots for freed blocks above 1 MiB, reused by exact size, so that many threads that "
      "allocate the same large sizes scale without the arena's lock. auto: a thread keeps them only "
      "while its large calls find the arena's lock held by another thread (a program whose large blocks "
      "come from one thread places them as with no slots); 1: always (on PyTorch workloads that raised "
      "the peak by 0.06-0.21 GiB, docs/benchmarks.md); 0: never."},
     [](const char* v, Settings& s) {
       if (equals_ignoring_case(v, "auto")) return s.large_slots = Settings::LargeSlots::while_contended, true;
       bool on = false;
       if (!parse_bool(v, &on)) return false;
       s.large_slots = on ? Settings::LargeSlots::always : Settings::LargeSlots::never;
       return true;
     }},
    {{"GPUSHIM_BUDDY_REGION", "size", "1GiB", "a power of two >= 2MiB",
      "buddy: size of one region taken from the provider; also the largest block the buddy serves."},
     [](const char* v, Settings& s) {
       std::uint64_t bytes = 0;
       if (!size_at_least(v, kMinMappingSize, &bytes) || (bytes & (bytes - 1)) != 0) return false;
       s.buddy_region = bytes;
       return true;
     }},
    {{"GPUSHIM_SLAB_MAX_SIZE", "size", "1MiB", "a size >= 256",
      "slab: largest block served from a size class; larger blocks take whole runs of 2 MiB slabs."},
     [](const char* v, Settings& s) { return size_at_least(v, kMinBlockSize, &s.slab_max_size); }},
    {{"GPUSHIM_TIERED_SPLIT", "size", "64KiB", "a size >= 256",
      "tiered: blocks up to this size go to the slab, larger ones to the vmm arena."},
     [](const char* v, Settings& s) { return size_at_least(v, kMinBlockSize, &s.tiered_split); }},
    {{"GPUSHIM_MEMPOOL_RELEASE_THRESHOLD", "size", "1GiB", "a size; 0 = give back at every sync",
      "mempool: the pool's release threshold (CU_MEMPOOL_ATTR_RELEASE_THRESHOLD): memory the pool "
      "keeps cached across synchronizations."},
     [](const char* v, Settings& s) { return parse_size(v, &s.mempool_release_threshold); }},
    {{"GPUSHIM_TRACE", "path", "", "a file path; %p = process id, %r = rank; empty = off",
      "Record every allocation event to this file (read it with `gpushim trace ...`)."},
     [](const char* v, Settings& s) { return s.trace_path = v, true; }},
    {{"GPUSHIM_TRACE_STACK", "int", "0", "0 to 64",
      "Return addresses recorded per traced allocation (0 = no call stacks)."},
     [](const char* v, Settings& s) { return parse_int_up_to(v, kMaxTraceStack, &s.trace_stack); }},
    {{"GPUSHIM_OOM_DUMP", "path", "", "a file path; %p = process id, %r = rank; empty = off",
      "When the first allocation fails (out of memory, or GPUSHIM_FAIL), write every live block, the "
      "memory held per device and the failing request to this file, in the trace format (read it with "
      "`gpushim trace summary`; docs/oom-dump.md)."},
     [](const char* v, Settings& s) { return s.oom_dump_path = v, true; }},
    {{"GPUSHIM_OOM_DUMP_STACK", "int", "0", "0 to 64",
      "Return addresses kept per live block for GPUSHIM_OOM_DUMP (0 = none). Costs a stack walk on "
      "every allocation while set; without it the dump names blocks by size, stream and age only."},
     [](const char* v, Settings& s) { return parse_int_up_to(v, kMaxTraceStack, &s.oom_dump_stack); }},
    {{"GPUSHIM_FAIL", "faults", "",
      "comma-separated conditions: nth=N, every=N, size>=S, after=T (T: 500ms, 2s); empty = off",
      "Fail matching allocations with CUDA_ERROR_OUT_OF_MEMORY on purpose, exactly as a real failure "
      "(report, GPUSHIM_OOM_DUMP, the failed count), to test recovery. nth=N: the Nth matching "
      "allocation only; every=N: every Nth; size>=S and after=T (since gpushim started) narrow which "
      "allocations match. Example: size>=1GiB,nth=2."},
     [](const char* v, Settings& s) { return parse_fault_spec(v, &s.fail); }},
    {{"GPUSHIM_PEERS", "list", "", "all, or device numbers 0 to 63 like 0,1,3; empty = none",
      "Devices whose memory is made accessible to each other (peer access for gpushim's blocks)."},
     [](const char* v, Settings& s) {
       return parse_device_list(v, &s.peers);
     }},
    {{"GPUSHIM_PLACEMENT", "choice", "local", kPlacementChoices,
      "Which device's memory backs a block: the caller's (local), spread over the peers "
      "(interleave), or the caller's first and the peers when it is full (spill)."},
     [](const char* v, Settings& s) {
       std::string choice = listed_word(v, kPlacementChoices);
       if (choice.empty()) return false;
       s.placement = choice;
       return true;
     }},
    {{"GPUSHIM_SPILL", "choice", "off", kSpillChoices,
      "host: when the device memory this process may use (the device, or GPUSHIM_LIMIT) is exhausted, "
      "serve the allocation from pinned host memory mapped for the GPU (kernels reach it over the host "
      "link, ~51 GB/s on the H100) instead of failing; off: fail as usual. vmm, buddy, slab and tiered "
      "only (docs/host-spill.md)."},
     [](const char* v, Settings& s) {
       const std::string choice = listed_word(v, kSpillChoices);
       if (choice.empty()) return false;
       s.spill_host = choice == "host";
       return true;
     }},
    {{"GPUSHIM_SPILL_LIMIT", "size-or-percent", "25%",
      "a size (512MiB, 8GiB) or a share of the host's memory (25%)",
      "Cap on the host memory GPUSHIM_SPILL=host pins per device; past it, allocations fail with "
      "CUDA_ERROR_OUT_OF_MEMORY. A share is of the host's physical memory (or the cgroup's limit, "
      "whichever is smaller)."},
     [](const char* v, Settings& s) {
       SizeSetting parsed;
       if (!parse_size_or_percent(v, &parsed) || !parsed.set()) return false;
       s.spill_limit = parsed;
       return true;
     }},
};

constexpr const char* kFallbackBackend = "passthrough";

const char* lookup_getenv(const char* name, void*) { return std::getenv(name); }

// settings() may run inside any call of the program (a dlsym, a cuMemAlloc), possibly before or during
// libc's own setup: print with a single write(2), never through stdio or log() (log() reads settings()).
void write_line(const std::string& line) {
  char buffer[1024];
  int length = std::snprintf(buffer, sizeof buffer, "gpushim: %s\n", line.c_str());
  if (length < 0) return;
  if (static_cast<std::size_t>(length) >= sizeof buffer) {
    length = sizeof buffer - 1;
    buffer[length - 1] = '\n';
  }
  ssize_t written;
  do {
    written = ::write(2, buffer, static_cast<std::size_t>(length));
  } while (written < 0 && errno == EINTR);
}

Settings parse_from_environment() {
  Settings parsed = parse_settings(&lookup_getenv, nullptr);
  if (!parsed.errors.empty() && (parsed.strict || parsed.log != LogLevel::quiet)) {
    for (const std::string& line : parsed.errors) write_line(line);
  }
  // _exit, not exit: we may be inside a driver call or a static initializer of the program, where
  // running its atexit handlers (which may call CUDA, hence gpushim, hence settings()) would deadlock.
  if (!parsed.errors.empty() && parsed.strict) ::_exit(1);
  return parsed;
}

}  // namespace

std::uint64_t SizeSetting::resolve(std::uint64_t device_total) const {
  if (percent == 0) return bytes;
  return static_cast<std::uint64_t>(static_cast<long double>(device_total) * percent / 100.0L);
}

bool parse_duration(const std::string& text, std::uint64_t* ns) {
  std::size_t at = 0;
  long double value = 0;
  bool digits = false;
  for (; at < text.size() && text[at] >= '0' && text[at] <= '9'; ++at, digits = true)
    value = value * 10 + (text[at] - '0');
  if (at < text.size() && text[at] == '.') {
    long double scale = 0.1L;
    for (++at; at < text.size() && text[at] >= '0' && text[at] <= '9'; ++at, digits = true, scale /= 10)
      value += scale * (text[at] - '0');
  }
  if (!digits) return false;
  const std::string unit = text.substr(at);
  long double per_unit = 0;
  if (unit.empty() || unit == "s") per_unit = 1e9L;
  else if (unit == "ms") per_unit = 1e6L;
  else if (unit == "us") per_unit = 1e3L;
  else if (unit == "ns") per_unit = 1;
  else if (unit == "m") per_unit = 60e9L;
  else return false;
  const long double result = value * per_unit;
  if (result >= 9.2e18L) return false;  // beyond any run's length: a typo
  *ns = static_cast<std::uint64_t>(result + 0.5L);
  return true;
}

// Units: bare k/M/G/T and KiB/MiB/GiB/TiB are powers of 1024 (as in ulimit, -Xmx, numfmt --from=iec);
// KB/MB/GB/TB (with B, without i) are powers of 1000, as disks are sold: 2GB = 2,000,000,000.
// Letters are case-insensitive, a space may separate number and unit, and "B" alone means bytes.
bool parse_size(const char* text, std::uint64_t* bytes) {
  if (text == nullptr) return false;
  const char* c = text;
  while (*c == ' ') ++c;
  long double value = 0;
  if (!parse_decimal(c, &value)) return false;
  while (*c == ' ') ++c;

  auto lower = [](char x) { return (x >= 'A' && x <= 'Z') ? static_cast<char>(x - 'A' + 'a') : x; };
  long double multiplier = 1;
  if (*c != '\0') {
    int power = 0;
    switch (lower(*c)) {
      case 'k': power = 1; break;
      case 'm': power = 2; break;
      case 'g': power = 3; break;
      case 't': power = 4; break;
      case 'b': power = 0; break;
      default: return false;
    }
    if (power == 0) {
      ++c;  // "B": plain bytes
    } else {
      ++c;
      long double base = 1024;
      if (lower(*c) == 'i' && lower(c[1]) == 'b') {
        c += 2;
      } else if (lower(*c) == 'b') {
        base = 1000;
        ++c;
      }
      for (int i = 0; i < power; ++i) multiplier *= base;
    }
    while (*c == ' ') ++c;
    if (*c != '\0') return false;
  }
  const long double result = value * multiplier + 0.5L;
  // 2^64 would not fit; anything that large is a typo anyway.
  if (result >= 18446744073709551615.0L) return false;
  *bytes = static_cast<std::uint64_t>(result);
  return true;
}

bool parse_size_or_percent(const char* text, SizeSetting* out) {
  if (text == nullptr) return false;
  const char* c = text;
  while (*c == ' ') ++c;
  long double value = 0;
  if (!parse_decimal(c, &value)) return false;
  while (*c == ' ') ++c;
  if (*c != '%') {
    std::uint64_t bytes = 0;
    if (!parse_size(text, &bytes)) return false;
    *out = SizeSetting{bytes, 0};
    return true;
  }
  if (c[1] != '\0' || !(value > 0 && value <= 100)) return false;
  *out = SizeSetting{0, static_cast<double>(value)};
  return true;
}

Settings parse_settings(EnvLookup lookup, void* user) {
  Settings parsed;
  for (const Row& row : kRows) {
    if (row.text.default_value[0] != '\0') row.apply(row.text.default_value, parsed);
  }

  // GPUSHIM_STRICT first: it decides how every other bad value ends.
  const char* strict_text = lookup("GPUSHIM_STRICT", user);
  bool strict = false;
  if (strict_text && *strict_text && parse_bool(strict_text, &strict)) parsed.strict = strict;

  for (const Row& row : kRows) {
    const char* value = lookup(row.text.variable, user);
    if (value == nullptr || *value == '\0') continue;  // unset and empty both mean the default
    if (row.apply(value, parsed)) continue;
    // The value is escaped: one with a newline or a terminal escape must not break the one-line message.
    std::string line = std::string(row.text.variable) + "=" + printable(value) + " is not valid; accepted: " +
                       row.text.accepted + ".";
    line += parsed.strict ? " Exiting (GPUSHIM_STRICT=1)." : " Using passthrough.";
    parsed.errors.push_back(std::move(line));
  }
  if (!parsed.errors.empty()) parsed.backend = kFallbackBackend;
  return parsed;
}

const Settings& settings() {
  static const Settings parsed = parse_from_environment();
  return parsed;
}

const SettingRow* setting_value_rejected_by(const char* variable, const char* value) {
  static const SettingRow kUnknown{"", "", "", "a GPUSHIM_ variable", ""};
  for (const Row& row : kRows) {
    if (std::strcmp(row.text.variable, variable) != 0) continue;
    Settings scratch;
    return value != nullptr && *value != '\0' && row.apply(value, scratch) ? nullptr : &row.text;
  }
  return &kUnknown;
}

const char* format_bytes(unsigned long long bytes, char* buf, unsigned long size) {
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) {
    std::snprintf(buf, size, "%llu B", bytes);
    return buf;
  }
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit + 1 < static_cast<int>(sizeof kUnits / sizeof kUnits[0])) {
    value /= 1024.0;
    ++unit;
  }
  std::snprintf(buf, size, "%.2f %s", value, kUnits[unit]);
  return buf;
}

std::string setting_value_meaning(const SettingRow& row, const char* value) {
  if (value == nullptr || *value == '\0') value = row.default_value;
  if (*value == '\0') return "none";
  const std::string type = row.type;
  auto size_text = [](std::uint64_t bytes) {
    char human[32];
    return std::to_string(bytes) + " bytes (" + format_bytes(bytes, human, sizeof human) + ")";
  };
  if (type == "bool") {
    bool on = false;
    if (parse_bool(value, &on)) return on ? "on" : "off";
  } else if (type == "choice") {
    std::string word = listed_word(value, row.accepted);
    if (!word.empty()) return word;
  } else if (type == "size") {
    std::uint64_t bytes = 0;
    if (parse_size(value, &bytes)) return size_text(bytes);
  } else if (type == "size-or-percent") {
    SizeSetting size;
    if (parse_size_or_percent(value, &size)) {
      if (size.percent != 0) {
        char share[32];
        std::snprintf(share, sizeof share, "%g%%", size.percent);
        return std::string(share) + " of each device's memory";
      }
      return size.bytes == 0 ? "0 (none)" : size_text(size.bytes);
    }
  } else if (type == "list") {
    std::string devices;
    if (parse_device_list(value, &devices)) return devices == "all" ? "all devices" : "devices " + devices;
  }
  return value;
}

const std::vector<SettingRow>& setting_rows() {
  static const std::vector<SettingRow> rows = [] {
    std::vector<SettingRow> out;
    for (const Row& row : kRows) out.push_back(row.text);
    return out;
  }();
  return rows;
}

}  // namespace gpushim
