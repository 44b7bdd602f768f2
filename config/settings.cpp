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

#include "diagnostics/printable.h"

namespace gpushim {
namespace {

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t GiB = 1024 * MiB;

// The VMM granularity measured on the H100 (DESIGN.md). Mapping less than this is impossible, so a
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

// Accepts one of the words of a ", "-separated list ("local, interleave, spill").
bool is_listed(const char* text, const char* list) {
  const std::size_t length = std::strlen(text);
  if (length == 0) return false;
  for (const char* item = list; *item;) {
    const char* end = std::strchr(item, ',');
    const std::size_t item_length = end ? static_cast<std::size_t>(end - item) : std::strlen(item);
    if (item_length == length && std::strncmp(item, text, length) == 0) return true;
    if (!end) break;
    item = end + 1;
    while (*item == ' ') ++item;
  }
  return false;
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

bool parse_log_level(const char* text, LogLevel* out) {
  static const struct { const char* name; LogLevel level; } kLevels[] = {
      {"quiet", LogLevel::quiet}, {"warn", LogLevel::warn},
      {"info", LogLevel::info},   {"debug", LogLevel::debug}};
  for (const auto& entry : kLevels)
    if (equals_ignoring_case(text, entry.name)) return *out = entry.level, true;
  return false;
}

// "all", or device ordinals separated by commas: "0,1,3".
bool is_device_list(const char* text) {
  if (std::strcmp(text, "all") == 0) return true;
  bool digit_seen = false;
  for (const char* c = text; *c; ++c) {
    if (*c >= '0' && *c <= '9') {
      digit_seen = true;
    } else if (*c == ',' && digit_seen) {
      digit_seen = false;
    } else {
      return false;
    }
  }
  return digit_seen;
}

// A row of the table: the public description plus how to store a value. `apply` returns false for a
// value it does not accept and then leaves the setting untouched.
struct Row {
  SettingRow text;
  bool (*apply)(const char* value, Settings& settings);
};

// The backend names must equal backend_table() (allocators/backend_registry.cpp), in its order; config
// does not link the allocators, so tests/settings_backend_names_test.cpp checks that they agree.
// Sizes are written in the defaults exactly as a user would write them: they go through the same parser.
const Row kRows[] = {
    {{"GPUSHIM_BACKEND", "choice", "tiered", "tiered, vmm, buddy, slab, mempool, passthrough",
      "Which backend serves device allocations (`gpushim backends` describes each)."},
     [](const char* v, Settings& s) {
       if (!is_listed(v, "tiered, vmm, buddy, slab, mempool, passthrough")) return false;
       s.backend = v;
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
    {{"GPUSHIM_FREE_FENCE", "choice", "auto", "auto, always",
      "When a block freed with cudaFree may be reused. auto: at once while the program has created no "
      "stream (all its work is ordered on the legacy stream, as PyTorch's and CuPy's default), else after "
      "a fence shows the GPU work issued before the free has finished; always: after the fence, even then "
      "(for programs built with --default-stream per-thread that free, from one thread, memory another "
      "thread's kernels still use)."},
     [](const char* v, Settings& s) {
       if (!is_listed(v, "auto, always")) return false;
       s.fence_always = std::string(v) == "always";
       return true;
     }},
    {{"GPUSHIM_VMM_RESERVE", "size", "256GiB", "a size >= 2MiB",
      "vmm: virtual address space reserved once per device; the arena never grows past it. "
      "Reserving costs no memory (1 TiB took 14 us on the H100)."},
     [](const char* v, Settings& s) { return size_at_least(v, kMinMappingSize, &s.vmm_reserve); }},
    {{"GPUSHIM_VMM_GROW_STEP", "size", "32MiB", "a size >= 2MiB (rounded up to the device granularity)",
      "vmm: physical memory mapped each time the arena grows. Larger steps mean fewer cuMemCreate/"
      "cuMemSetAccess calls (30-54 us each), smaller ones less idle memory."},
     [](const char* v, Settings& s) { return size_at_least(v, kMinMappingSize, &s.vmm_grow_step); }},
    {{"GPUSHIM_VMM_RELEASE_THRESHOLD", "size", "8GiB", "a size; 0 = give back all idle memory",
      "vmm: idle mapped memory kept per device; above it, idle mappings are given back to the driver."},
     [](const char* v, Settings& s) { return parse_size(v, &s.vmm_release_threshold); }},
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
    {{"GPUSHIM_TIERED_SPLIT", "size", "1MiB", "a size >= 256",
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
     [](const char* v, Settings& s) {
       int depth = 0;
       for (const char* c = v; *c; ++c) {
         if (*c < '0' || *c > '9' || depth > kMaxTraceStack) return false;
         depth = depth * 10 + (*c - '0');
       }
       if (*v == '\0' || depth > kMaxTraceStack) return false;
       s.trace_stack = depth;
       return true;
     }},
    {{"GPUSHIM_PEERS", "list", "", "all, or device numbers like 0,1,3; empty = none",
      "Devices whose memory is made accessible to each other (peer access for gpushim's blocks)."},
     [](const char* v, Settings& s) {
       if (!is_device_list(v)) return false;
       s.peers = v;
       return true;
     }},
    {{"GPUSHIM_PLACEMENT", "choice", "local", "local, interleave, spill",
      "Which device's memory backs a block: the caller's (local), spread over the peers "
      "(interleave), or the caller's first and the peers when it is full (spill)."},
     [](const char* v, Settings& s) {
       if (!is_listed(v, "local, interleave, spill")) return false;
       s.placement = v;
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

const std::vector<SettingRow>& setting_rows() {
  static const std::vector<SettingRow> rows = [] {
    std::vector<SettingRow> out;
    for (const Row& row : kRows) out.push_back(row.text);
    return out;
  }();
  return rows;
}

}  // namespace gpushim
