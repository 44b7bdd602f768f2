// The exit statistics table (router/exit_statistics.h).
#include "router/exit_statistics.h"

#include <mutex>
#include <string>
#include <vector>

#include "config/settings.h"
#include "diagnostics/log.h"
#include "router/fault_injection.h"
#include "router/memory_report.h"
#include "router/router_state.h"
#include "router/stream_activity.h"
#include "router/thread_state.h"
#include "tracing/trace_recorder.h"

namespace gpushim::router {

void at_exit() noexcept {
  // No driver call here: the program's CUDA teardown may already have run.
  if (settings().stats && !g_forked_child) {
    std::vector<StatsRow> rows;
    try {
      std::lock_guard<AdaptiveMutex> registry(g_threads_lock);
      for (int d = 0; d < kMaxDevices; ++d) {
        DeviceState* device = g_devices[d].load(std::memory_order_acquire);
        if (!device) continue;
        StatsRow row;
        row.device = d;
        row.backend = device->properties.name;
        Counters total;  // the exited threads' and every live thread's
        total.add(g_retired[d]);
        for (ThreadState* thread : threads()) total.add(thread->counters[d]);
        row.allocs = total.allocs.load();
        row.frees = total.frees.load();
        row.failed = total.failed.load();
        row.bytes_allocated = total.bytes.load();
        row.fenced_frees = total.fenced.load();
        row.at_peak = total.at_peak.load();
        row.at_peak_taken = total.at_peak_taken.load();
        row.at_peak_waited = total.at_peak_waited.load();
        row.at_peak_past_by_rule = total.at_peak_past_by_rule.load();
        row.at_peak_past_unwaited = total.at_peak_past_unwaited.load();
        row.at_peak_past_after_wait = total.at_peak_past_after_wait.load();
        row.at_peak_past_mapped = total.at_peak_past_mapped.load();
        row.at_peak_wait_ns = total.at_peak_wait_ns.load();
        AllocatorStats stats = device->backend().stats();
        row.peak_live = stats.peak_bytes_in_use;
        row.peak_reserved = stats.peak_bytes_reserved;
        row.spill_limit = device->properties.spill_limit;
        row.spilled_allocs = stats.spilled_allocations;
        row.peak_spilled = stats.peak_bytes_spilled;
        row.peak_spill_reserved = stats.peak_spill_reserved;
        row.peak_fence_waiting = device->fences.peak_pending_bytes();
        row.fences = device->fences.times();
        row.fences.marked_batches = device->marked_batches.load(std::memory_order_relaxed);
        row.fences.marked_blocks_passed = device->marked_blocks_passed.load(std::memory_order_relaxed);
        if (const MappingStatisticsProvider* mappings = device->properties.mappings) row.mappings = mappings->totals();
        rows.push_back(row);
      }
      for (const std::string& line : format_stats_table(rows)) print_report_line("%s", line.c_str());
      // Solo is the process's, not a device's (router/stream_activity.h).
      const SoloCounts solo = solo_counts();
      if (solo.began)
        print_report_line("solo (one non-blocking stream alone, its frees reused at once) began %llu times; ended "
                          "by legacy work %llu, another stream %llu, a capture %llu; the stream went idle %llu",
                          static_cast<unsigned long long>(solo.began),
                          static_cast<unsigned long long>(solo.ended_by_legacy),
                          static_cast<unsigned long long>(solo.ended_by_stream),
                          static_cast<unsigned long long>(solo.ended_by_capture),
                          static_cast<unsigned long long>(solo.ended_idle));
      if (const std::uint64_t injected = injected_failures())
        print_report_line("GPUSHIM_FAIL injected %llu of the failed allocations",
                          static_cast<unsigned long long>(injected));
    } catch (...) {
    }
  }
  tracing::flush();
}

}  // namespace gpushim::router
