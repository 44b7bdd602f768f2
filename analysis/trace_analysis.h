// What the `gpushim trace` tools compute from a Trace: totals, live and reserved bytes over time,
// histograms, lifetimes and allocation sites. One pass over the events, shared by summary, report and
// export so they never disagree.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "analysis/trace_reader.h"

namespace gpushim::tracing {

struct MemorySample {
  std::uint64_t time_ns;
  std::uint64_t live;       // bytes in live blocks (requested sizes)
  std::uint64_t reserved;   // bytes mapped by providers (map - unmap); = live when the trace has no maps
};

// Modules between the program and the driver that every device allocation passes through: the CUDA
// runtime and driver, gpushim itself, and PyTorch's caching allocator (c10 / c10_cuda). Their frames
// are the same for every site, so a site is labelled by its first frame outside them. Matched as a
// prefix of the module's file name. Libraries that are real callers (cuBLAS, cuDNN, libtorch_cuda)
// stay out of this list on purpose: "cuBLAS workspace" is an answer a user can act on.
extern const char* const kAllocatorPlumbingModules[5];

// True when `module_path`'s file name starts with one of kAllocatorPlumbingModules.
bool is_allocator_plumbing(const std::string& module_path);

class Symbolizer;
struct AllocationSite;
// What a site is called in the summary and the report: its label frame, and how many plumbing frames
// were skipped to reach it, e.g. "train_step (model.cpp:42)  [4 allocator frames skipped]".
std::string site_label(const AllocationSite& site, const Symbolizer& symbols);

// The names of the first `count` sites (all when count exceeds them), told apart: sites whose label
// frames read the same (two callers of one function; or, where a module is missing here, both
// "libtorch_cpu.so+0x197746c") are named "X via Y", Y the first frame further out where the stack
// stops being shared with another of them, and "X (stack N)" when no frame tells them apart.
std::vector<std::string> site_names(const std::vector<AllocationSite>& sites, std::size_t count,
                                    const Symbolizer& symbols);
// site_names with site_label's note of skipped plumbing frames.
std::vector<std::string> site_labels(const std::vector<AllocationSite>& sites, std::size_t count,
                                     const Symbolizer& symbols);

struct AllocationSite {
  // The whole recorded stack (less leading frames inside libgpushim), innermost first; empty: unknown.
  // Sites are told apart by all of it: two callers that share the first frames are two sites.
  std::vector<std::uint64_t> frames;
  // Index in `frames` of the frame that names the site: the first one outside allocator plumbing
  // (= how many plumbing frames the label skips). When every recorded frame is plumbing (a stack cut
  // short inside the runtime), the last recorded frame, the closest to the caller we have.
  std::size_t label_frame = 0;
  bool all_plumbing = false;          // every recorded frame is allocator plumbing
  std::uint64_t count = 0;
  std::uint64_t bytes = 0;            // total bytes ever allocated here
  std::uint64_t live = 0;
  std::uint64_t peak_live = 0;        // most bytes this site held at once
};

// One allocation from its alloc to its free (or the end of the trace).
struct Lifetime {
  std::uint64_t start_ns;
  std::uint64_t end_ns;
  std::uint64_t size;
  std::uint64_t address;
  std::uint32_t thread_id;
  std::int32_t device;
  std::uint32_t site;
  bool freed;
};

struct TraceSummary {
  std::array<std::uint64_t, 10> count_by_kind{};  // indexed by EventKind
  std::uint64_t events = 0;
  std::uint64_t duration_ns = 0;
  std::uint64_t bytes_allocated = 0;
  std::uint64_t bytes_freed = 0;
  std::uint64_t unmatched_frees = 0;   // frees of addresses the trace never saw allocated
  std::uint64_t live_at_end = 0;       // bytes never freed
  std::uint64_t blocks_live_at_end = 0;
  std::uint64_t peak_live = 0;
  std::uint64_t peak_live_time_ns = 0;
  std::uint64_t peak_reserved = 0;
  std::uint64_t peak_reserved_time_ns = 0;
  bool reserved_from_maps = false;     // false: no map/unmap events, reserved is taken as live
  std::uint32_t threads = 0;
  std::uint32_t devices = 0;
  // Power-of-two size classes: bucket i counts sizes in [2^i, 2^(i+1)). Bucket 0 also holds size 0.
  std::array<std::uint64_t, 64> size_histogram{};
  // Lifetimes in decades: <1us, <10us, <100us, <1ms, <10ms, <100ms, <1s, <10s, >=10s, never freed.
  std::array<std::uint64_t, 10> lifetime_histogram{};
  std::uint64_t median_lifetime_ns = 0;
  std::vector<AllocationSite> sites;   // sorted by peak_live, largest first
  std::vector<MemorySample> samples;   // one per change of live or reserved bytes
  std::vector<Lifetime> lifetimes;     // every allocation, in order of its alloc
};

TraceSummary summarize(const Trace& trace);

// Rows ("lanes") for drawing lifetimes so that no two on a row overlap: the row freed earliest is
// reused first, and only by a block allocated strictly after the free, so slices of a row never touch
// even after a viewer rounds their timestamps. As many rows as blocks were live at once. `lifetimes`
// must be in order of start, as TraceSummary::lifetimes are. Used by the Perfetto export and the report.
std::vector<int> assign_lanes(const std::vector<const Lifetime*>& lifetimes);

// `samples` thinned to at most `points` (keeping each interval's maximum, so peaks survive).
std::vector<MemorySample> downsample(const std::vector<MemorySample>& samples, std::size_t points);

extern const char* const kLifetimeBucketNames[10];

std::string format_size(std::uint64_t bytes);        // "1.50 GiB"
std::string format_duration(std::uint64_t ns);       // "12.3 ms"

}  // namespace gpushim::tracing
