// What the fences of one device cost and how long their blocks waited: the FreeFenceQueue counts it
// (router/free_fence_queue.h), GPUSHIM_STATS prints it (router/memory_report.h, the "fences" line).
// Plain values, so the report's formatting needs no queue.
#pragma once

#include <cstdint>

namespace gpushim {

// What a FenceEvents implementation asked the driver: events recorded, fences' events that reused a
// stream's newest event instead, and event queries.
struct FenceEventCounts {
  std::uint64_t recorded = 0;
  std::uint64_t shared = 0;
  std::uint64_t queried = 0;
};

// Where a freed block spends its time between the free and its return, which bounds how many blocks
// many threads with a stream each keep in flight (docs/perf-notes.md, thirty-seventh session).
struct FenceTimes {
  std::uint64_t fences = 0;                  // recorded fences found complete, their blocks given back
  std::uint64_t blocks = 0;                  // the blocks those fences held
  std::uint64_t close_to_record_ns = 0;      // summed over them: from the oldest batch's close to the record
  std::uint64_t record_to_complete_ns = 0;   // summed: from the record to the poll that found it complete
  std::uint64_t unfenced_blocks = 0;         // given back without a fence: the work turned ordered
  std::uint64_t driver_polls = 0;            // polls that recorded or queried
  // Batches that waited with their thread instead (router/marked_batches.h), and the blocks that came
  // back to it by their marks (the rest went with the turn to ordered, memory pressure or the exit).
  std::uint64_t marked_batches = 0;
  std::uint64_t marked_blocks_passed = 0;
  FenceEventCounts events;
};

}  // namespace gpushim
