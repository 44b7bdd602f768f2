#include "router/memory_report.h"

#include <cstdio>

#include "diagnostics/log.h"

namespace gpushim {
namespace {

std::string bytes_text(std::uint64_t bytes) {
  char buf[48];
  return format_bytes(bytes, buf, sizeof buf);
}

}  // namespace

double fragmentation_percent(std::uint64_t cached, std::uint64_t largest_free) noexcept {
  if (cached == 0) return 0.0;
  if (largest_free >= cached) return 0.0;
  return 100.0 * (1.0 - static_cast<double>(largest_free) / static_cast<double>(cached));
}

std::vector<std::string> format_oom_report(const OomReport& r) {
  std::vector<std::string> lines;
  char line[512];
  std::snprintf(line, sizeof line, "out of memory on device %d (backend %s): requested %s%s", r.device,
                r.backend, bytes_text(r.requested).c_str(), r.injected ? " (injected by GPUSHIM_FAIL)" : "");
  lines.emplace_back(line);
  std::snprintf(line, sizeof line, "  live %s in %llu blocks, reserved %s, cached %s, pending free %s%s%s",
                bytes_text(r.live_bytes).c_str(), static_cast<unsigned long long>(r.live_blocks),
                bytes_text(r.reserved).c_str(), bytes_text(r.cached).c_str(),
                bytes_text(r.pending_free).c_str(), r.limit ? ", limit " : "",
                r.limit ? bytes_text(r.limit).c_str() : "");
  lines.emplace_back(line);
  std::snprintf(line, sizeof line, "  largest free block %s, fragmentation %.1f%%",
                bytes_text(r.largest_free).c_str(), fragmentation_percent(r.cached, r.largest_free));
  lines.emplace_back(line);
  if (!r.placement.empty()) lines.push_back("  memory mapped by device: " + r.placement);
  if (r.spill_limit) {
    std::snprintf(line, sizeof line, "  spilled to host: live %s, mapped %s of the %s cap (GPUSHIM_SPILL_LIMIT)",
                  bytes_text(r.spilled).c_str(), bytes_text(r.spill_reserved).c_str(),
                  bytes_text(r.spill_limit).c_str());
    lines.emplace_back(line);
  }
  if (!r.largest_live.empty()) {
    std::snprintf(line, sizeof line, "  largest live allocations (%zu):", r.largest_live.size());
    lines.emplace_back(line);
    for (const OomReport::Block& block : r.largest_live) {
      std::snprintf(line, sizeof line, "    %s at 0x%llx", bytes_text(block.bytes).c_str(),
                    static_cast<unsigned long long>(block.address));
      lines.emplace_back(line);
    }
  }
  return lines;
}

std::vector<std::string> format_stats_table(const std::vector<StatsRow>& rows) {
  // Column widths reproduce the header of docs/configuration.md character for character.
  static const char* const kRowFormat = "%6s %-7s %12s %10s %10s %16s %11s %14s";
  std::vector<std::string> lines;
  char line[512];
  std::snprintf(line, sizeof line, kRowFormat, "device", "backend", "allocs", "frees", "failed",
                "bytes_allocated", "peak_live", "peak_reserved");
  lines.emplace_back(line);
  for (const StatsRow& row : rows) {
    if (row.allocs == 0 && row.frees == 0 && row.failed == 0) continue;
    char device[16], allocs[24], frees[24], failed[24];
    std::snprintf(device, sizeof device, "%d", row.device);
    std::snprintf(allocs, sizeof allocs, "%llu", static_cast<unsigned long long>(row.allocs));
    std::snprintf(frees, sizeof frees, "%llu", static_cast<unsigned long long>(row.frees));
    std::snprintf(failed, sizeof failed, "%llu", static_cast<unsigned long long>(row.failed));
    std::snprintf(line, sizeof line, kRowFormat, device, row.backend.c_str(), allocs, frees, failed,
                  bytes_text(row.bytes_allocated).c_str(), bytes_text(row.peak_live).c_str(),
                  bytes_text(row.peak_reserved).c_str());
    lines.emplace_back(line);
  }
  // Spilling is a state of the run worth its own line, not a column every run would carry empty.
  for (const StatsRow& row : rows) {
    if (row.spill_limit == 0) continue;
    std::snprintf(line, sizeof line,
                  "device %d spilled to host: %llu blocks, peak live %s, peak mapped %s, cap %s", row.device,
                  static_cast<unsigned long long>(row.spilled_allocs), bytes_text(row.peak_spilled).c_str(),
                  bytes_text(row.peak_spill_reserved).c_str(), bytes_text(row.spill_limit).c_str());
    lines.emplace_back(line);
  }
  for (const StatsRow& row : rows) {
    if (row.fenced_frees == 0) continue;
    std::snprintf(line, sizeof line, "device %d fenced %llu of %llu frees; peak waiting for a fence %s", row.device,
                  static_cast<unsigned long long>(row.fenced_frees), static_cast<unsigned long long>(row.frees),
                  bytes_text(row.peak_fence_waiting).c_str());
    lines.emplace_back(line);
  }
  for (const StatsRow& row : rows) {
    if (row.at_peak == 0) continue;
    std::snprintf(line, sizeof line,
                  "device %d at the peak while blocks waited for fences: %llu allocations; %llu took blocks other "
                  "threads got back, %llu waited for fences, %llu were let past the peak (%llu at once by the "
                  "growth rule, %llu with too little fenced to wait for, %llu after waiting in vain; %llu of "
                  "them mapped memory); the waits took %.1f ms in all",
                  row.device, static_cast<unsigned long long>(row.at_peak),
                  static_cast<unsigned long long>(row.at_peak_taken),
                  static_cast<unsigned long long>(row.at_peak_waited),
                  static_cast<unsigned long long>(row.at_peak_past_by_rule + row.at_peak_past_unwaited +
                                                  row.at_peak_past_after_wait),
                  static_cast<unsigned long long>(row.at_peak_past_by_rule),
                  static_cast<unsigned long long>(row.at_peak_past_unwaited),
                  static_cast<unsigned long long>(row.at_peak_past_after_wait),
                  static_cast<unsigned long long>(row.at_peak_past_mapped),
                  static_cast<double>(row.at_peak_wait_ns) / 1e6);
    lines.emplace_back(line);
  }
  // Where a fenced block's wait goes: a long record-to-complete with few queries is the GPU's; many
  // queries a fence is the poll's cost.
  for (const StatsRow& row : rows) {
    const FenceTimes& f = row.fences;
    if (f.fences == 0 && f.unfenced_blocks == 0 && f.marked_batches == 0) continue;
    const double fences = static_cast<double>(f.fences > 0 ? f.fences : 1);
    std::snprintf(line, sizeof line,
                  "device %d fences: %llu found complete, %llu blocks (%.1f a fence); close to record %.1f us, "
                  "record to found complete %.1f us (means); events %llu recorded, %llu shared, %llu queries in %llu polls; "
                  "%llu blocks went back unfenced when the work turned ordered; %llu batches marked, %llu of "
                  "their blocks back to their thread by the marks",
                  row.device, static_cast<unsigned long long>(f.fences), static_cast<unsigned long long>(f.blocks),
                  static_cast<double>(f.blocks) / fences, static_cast<double>(f.close_to_record_ns) / fences / 1e3,
                  static_cast<double>(f.record_to_complete_ns) / fences / 1e3,
                  static_cast<unsigned long long>(f.events.recorded), static_cast<unsigned long long>(f.events.shared),
                  static_cast<unsigned long long>(f.events.queried), static_cast<unsigned long long>(f.driver_polls),
                  static_cast<unsigned long long>(f.unfenced_blocks),
                  static_cast<unsigned long long>(f.marked_batches),
                  static_cast<unsigned long long>(f.marked_blocks_passed));
    lines.emplace_back(line);
  }
  // Memory mapped and given back, and the time the driver took: a slow stretch of a program that is
  // spent here shows, and so does an arena that gives memory back only to map it again.
  for (const StatsRow& row : rows) {
    const MappingTotals& m = row.mappings;
    if (m.maps == 0 && m.unmaps == 0 && m.refused_maps == 0) continue;
    std::snprintf(line, sizeof line,
                  "device %d mapped %s in %llu calls (%.1f ms), unmapped %s in %llu calls (%.1f ms); %llu maps "
                  "refused",
                  row.device, bytes_text(m.map_bytes).c_str(), static_cast<unsigned long long>(m.maps),
                  static_cast<double>(m.map_ns) / 1e6, bytes_text(m.unmap_bytes).c_str(),
                  static_cast<unsigned long long>(m.unmaps), static_cast<double>(m.unmap_ns) / 1e6,
                  static_cast<unsigned long long>(m.refused_maps));
    lines.emplace_back(line);
  }
  return lines;
}

}  // namespace gpushim
