// The out-of-memory path (router/out_of_memory.h).
#include "router/out_of_memory.h"

#include <string>

#include "diagnostics/log.h"
#include "ipc/cuda_ipc.h"
#include "router/held_for_importers.h"
#include "router/memory_report.h"
#include "router/stream_free_lists.h"
#include "router/thread_state.h"
#include "tracing/trace_recorder.h"

namespace gpushim::router {
namespace {

constexpr std::size_t kLargestLiveInReport = 10;

}  // namespace

std::uint64_t pending_bytes(DeviceState& device) noexcept {
  return device.fences.pending_bytes() + thread_pending_bytes(device.ordinal) + stream_list_bytes(device);
}

void* allocate_under_pressure(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept {
  Allocator& backend = device.backend();
  if (ipc::any_exports()) free_blocks_importers_released();
  device.fences.poll();
  if (void* p = backend.allocate(block_size, stream)) return p;

  close_all_thread_batches(device);
  close_all_stream_lists(device);
  device.fences.poll();
  if (void* p = backend.allocate(block_size, stream)) return p;

  // Memory pressure: now waiting for the GPU is better than failing.
  if (device.fences.synchronize_all() > 0)
    if (void* p = backend.allocate(block_size, stream)) return p;

  std::size_t released = backend.release_cached();
  if (released)
    tracing::record(tracing::EventKind::cache_release, device.ordinal, 0, 0, released, device.properties.id);
  if (void* p = backend.allocate(block_size, stream)) return p;
  // The device's memory is exhausted: with GPUSHIM_SPILL=host the block comes from host memory instead
  // (docs/host-spill.md); without it this returns nullptr.
  return backend.allocate_spilled(block_size, stream);
}

void report_out_of_memory(DeviceState& device, std::size_t requested) noexcept {
  bool expected = false;
  if (!device.in_oom_burst.compare_exchange_strong(expected, true)) return;  // once per burst
  try {
    AllocatorStats stats = device.backend().stats();
    OomReport report;
    report.device = device.ordinal;
    report.backend = device.properties.name;
    report.requested = requested;
    live_blocks().totals(device.ordinal, &report.live_bytes, &report.live_blocks);
    report.reserved = stats.bytes_reserved;
    report.cached = stats.bytes_cached;
    report.pending_free = pending_bytes(device);
    report.largest_free = stats.largest_free_block;
    report.limit = device.properties.limit;
    report.spill_limit = device.properties.spill_limit;
    report.spilled = stats.bytes_spilled;
    report.spill_reserved = stats.spill_reserved;
    if (device.properties.placed) {
      char placement[256];
      report.placement = describe_placement(*device.properties.placed, placement, sizeof placement);
    }
    for (const auto& entry : live_blocks().largest(device.ordinal, kLargestLiveInReport))
      report.largest_live.push_back({entry.address, entry.block.requested});
    for (const std::string& line : format_oom_report(report)) log(LogLevel::warn, "%s", line.c_str());
  } catch (...) {
    log(LogLevel::warn, "out of memory on device %d: requested %zu bytes", device.ordinal, requested);
  }
}

}  // namespace gpushim::router
