// The two things the router prints: the out-of-memory report and the GPUSHIM_STATS table at exit.
// Formatting is separate from the driver and from printing so it is tested on the CPU
// (tests/router_memory_report_test.cpp); the router passes each line to log().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "providers/mapping_statistics.h"
#include "router/fence_times.h"

namespace gpushim {

struct OomReport {
  int device = 0;
  const char* backend = "";
  std::uint64_t requested = 0;
  std::uint64_t live_bytes = 0;
  std::uint64_t live_blocks = 0;
  std::uint64_t reserved = 0;
  std::uint64_t cached = 0;
  std::uint64_t pending_free = 0;   // freed, waiting for a fence
  std::uint64_t largest_free = 0;
  std::uint64_t limit = 0;          // 0: no GPUSHIM_LIMIT
  std::uint64_t spill_limit = 0;    // GPUSHIM_SPILL=host: host memory the device may spill; 0: no spill
  std::uint64_t spilled = 0;        // live blocks in host memory (requested bytes)
  std::uint64_t spill_reserved = 0; // host memory mapped for them
  bool injected = false;            // GPUSHIM_FAIL made this allocation fail, not a lack of memory
  // With GPUSHIM_PEERS: which devices' physical memory backs this device's blocks, as
  // describe_placement() words it ("device 0: 1.50 GiB, device 1: 512.00 MiB"); empty otherwise.
  std::string placement;
  struct Block {
    std::uintptr_t address;
    std::uint64_t bytes;
  };
  std::vector<Block> largest_live;  // largest first
};

// 1 - largest_free / cached, in percent: 0 when the cached memory is one block, near 100 when it is
// dust. 0 when nothing is cached.
double fragmentation_percent(std::uint64_t cached, std::uint64_t largest_free) noexcept;

// Lines without the "gpushim: " prefix (log() adds it).
std::vector<std::string> format_oom_report(const OomReport& report);

struct StatsRow {
  int device = 0;
  std::string backend;
  std::uint64_t allocs = 0;
  std::uint64_t frees = 0;
  std::uint64_t failed = 0;
  std::uint64_t bytes_allocated = 0;  // sum of the requested sizes of all allocations served
  std::uint64_t peak_live = 0;
  std::uint64_t peak_reserved = 0;
  // GPUSHIM_SPILL=host (docs/host-spill.md): blocks served from host memory; a line under the table.
  std::uint64_t spilled_allocs = 0;
  std::uint64_t peak_spilled = 0;        // live bytes in host memory at most
  std::uint64_t peak_spill_reserved = 0; // host memory mapped at most
  std::uint64_t spill_limit = 0;         // 0: this device does not spill
  // Free-safety (docs/free-safety.md): cuMemFree'd blocks that waited for a fence because a stream other
  // than the legacy one carried work, and the most bytes that waited at once in closed batches.
  std::uint64_t fenced_frees = 0;
  std::uint64_t peak_fence_waiting = 0;
  // Allocations that found the backend at its peak while freed blocks waited for fences
  // (router/out_of_memory.h, allocate_without_new_peak), and how each was served: a block another
  // thread got back (or every thread's returned blocks together), one after waiting for the fences, or
  // being let past the peak, and the time they waited for fences in all (summed over threads). A line
  // under the table when any. An allocation is let past the peak for one of three reasons, counted
  // apart: the growth rule's turn (at once, router/peak_growth.h), too little fenced to wait for (the
  // fenced and cached bytes could not serve it), and a wait that got no block (the fence queue emptied
  // while other threads took what came back, or the bound ran out). Let past, the backend may still find
  // room without mapping more (the tiered backend first gives its small tier's empty slabs back, and
  // other threads' frees land meanwhile): 16 threads at 16 MiB were let past 1,276 times in a process
  // whose peak was 5.6 GiB (H200, twenty-fifth session). So the ones that mapped memory, which did
  // grow, are counted too.
  std::uint64_t at_peak = 0;
  std::uint64_t at_peak_taken = 0;
  std::uint64_t at_peak_waited = 0;
  std::uint64_t at_peak_past_by_rule = 0;
  std::uint64_t at_peak_past_unwaited = 0;
  std::uint64_t at_peak_past_after_wait = 0;
  std::uint64_t at_peak_past_mapped = 0;  // of those let past, the ones that mapped memory
  std::uint64_t at_peak_wait_ns = 0;
  // The fences (router/fence_times.h): a line under the table when any fence completed or any block
  // went back unfenced.
  FenceTimes fences;
  // The device provider's map() and unmap() calls (providers/mapping_statistics.h): a line under the
  // table when any.
  MappingTotals mappings;
};

// The header and one line per row, exactly as docs/configuration.md ("The statistics table") shows
// them (whitespace-separated; byte columns are format_bytes "<number> <unit>" pairs). Rows with no call
// are left out. Then, only for devices that spill (GPUSHIM_SPILL=host), one "device D spilled to host:
// ..." line each; for devices where frees waited for a fence, one "device D fenced ..." line each, and
// where allocations found the peak meanwhile, one "device D at the peak ..." line each; where fences
// completed or blocks went back unfenced, one "device D fences: ..." line each; for devices whose
// provider mapped memory, one "device D mapped ..." line each.
std::vector<std::string> format_stats_table(const std::vector<StatsRow>& rows);

}  // namespace gpushim
