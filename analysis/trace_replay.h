// `gpushim trace replay`: runs a trace's allocations and frees, in order, against a backend's algorithm
// over host memory (HostProvider reserves address space and maps without touching pages, so a trace of
// a 70 GiB job replays on a laptop). Answers "what would backend X have reserved for this program?".
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "allocators/backend_registry.h"
#include "analysis/trace_reader.h"

namespace gpushim::tracing {

struct ReplayResult {
  std::string backend;
  std::uint64_t peak_reserved = 0;   // most bytes the providers had mapped at once
  std::uint64_t peak_live = 0;       // most requested bytes live at once
  double fragmentation = 0;          // peak_reserved / peak_live (1.0 = no waste)
  std::uint64_t failed = 0;          // allocations the backend could not serve (its simulated OOM)
  std::uint64_t host_failed = 0;     // allocations lost because the host ran out (mmap failed,
                                     // std::bad_alloc): this machine's limit, not the backend's
  bool host_out_of_memory = false;   // the host ran out so badly the replay stopped early
  std::string refusal;               // not empty: the trace cannot be replayed, and why (one line)
  std::uint64_t operations = 0;      // allocate + deallocate calls made
  double ns_per_operation = 0;       // time inside allocate/deallocate only
  std::uint64_t provider_misuse = 0; // calls that would have broken the driver's VMM rules
  // Under a GpuLag only (all 0 without one):
  std::uint64_t peak_waiting = 0;    // most bytes freed by the program but not yet reusable at once
  std::uint64_t reused_on_stream = 0;  // waiting async-freed blocks handed out again on their own stream
};

// How far the GPU runs behind the CPU during the replay. Without a lag (the default) a free takes effect
// at once, as if every free synchronized. With one, a freed block goes back to the backend only once the
// GPU has passed the free: `events` more allocation/free calls of the trace after it, and `microseconds`
// of trace time after it (both, when both are set). That is how gpushim's fenced frees behave in a
// program that never synchronizes (docs/free-safety.md). Blocks freed with free_async wait too, but an
// allocation on the same stream of the same rounded size takes one back at once, as gpushim's per-stream
// free lists do. `batches` adds gpushim's fence batches: the lag starts when a free's batch closes, and
// blocks come back when a later close polls (analysis/replay_freed_blocks.h).
struct GpuLag {
  std::uint64_t events = 0;
  std::uint64_t microseconds = 0;
  bool batches = false;
  bool any() const { return events != 0 || microseconds != 0 || batches; }
};

// What sits in front of the backend in the replay. gpushim's preloaded library puts per-thread caches in
// front of every provider backend (allocators/backend_stack.cpp); a replay without them measures the
// backend's algorithm alone. With `thread_caches`, each thread of the trace replays on a thread of its
// own, in the trace's order (one call at a time), so each has its own cache as in the program;
// `large_slots` adds the caches' exact-size slots above 1 MiB, parking always (GPUSHIM_LARGE_SLOTS=1; the
// default, auto, parks only while threads contend for the arena, which a replay never does).
struct ReplayCaches {
  bool thread_caches = false;
  bool large_slots = false;
};

// Backends with a host-memory factory (provider backends); driver-backed ones cannot replay on a CPU.
std::vector<const BackendInfo*> replayable_backends();

// More devices than any node has: a trace naming more is damaged or hostile, and each simulated device
// costs a backend's reservations and tables on the host.
inline constexpr std::size_t kMaxReplayDevices = 64;

using ReplayProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;
ReplayResult replay_trace(const Trace& trace, const BackendInfo& backend,
                          const ReplayProgress& progress = {}, const GpuLag& lag = {},
                          const ReplayCaches& caches = {});

}  // namespace gpushim::tracing
