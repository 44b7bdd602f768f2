// Marked batches: a cuMemFree batch closed while streams carry work stays with the thread that freed
// it, marked with how many submissions each active stream had begun (router/stream_activity.h,
// StreamMark), and goes to that thread's returned list (router/returned_blocks.h) once the stream polls
// have seen every marked stream finish them. Checking is loads: no event, no driver call, no lock but
// the thread's own.
//
// Why: through the fence queue, a thread's fenced blocks came back only through shared state: the
// queue's lock, one thread recording events for all under the driver lock, the thread registry, or the
// whole process turning ordered (every stream idle at once, seen by one poll, which then gave every
// thread's blocks back). With 16 threads, each launching on its own stream, the streams are rarely all
// idle at once, and the threads' lists ran dry while their blocks waited: 16 threads moved 4.4-7.3x the
// pairs of one thread where the same program with every free reused at once moved 10-16x (H200,
// thirty-ninth session, docs/perf-notes.md). A marked batch waits only for the streams that were
// working at its close, each only up to that point, while the others go on.
//
// When it cannot be marked (legacy work not known done, a destroyed stream still counted, work on a
// per-thread default stream, GPUSHIM_FREE_FENCE other than auto, GPUSHIM_THREAD_FENCES=0, a
// stream-ordered or driver-backed backend) the batch goes to the fence queue as before.
// docs/free-safety.md ("Marked batches") says why a passed mark makes the blocks safe.
#pragma once

#include <cstdint>
#include <vector>

#include "router/free_fence_queue.h"
#include "router/stream_activity.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

struct DeviceState;
struct ThreadState;

struct MarkedBatch {
  std::vector<FreedBlock> blocks;
  std::vector<StreamMark> marks;
  std::uint64_t bytes = 0;
  FenceContext context = nullptr;  // the batch's, should it be fenced after all (memory pressure, exit)
  bool passed() const noexcept {
    for (const StreamMark& mark : marks)
      if (!stream_passed(mark)) return false;
    return true;
  }
};

// Holds `blocks` (the calling thread `thread`'s batch, closed now) as a marked batch: true, and
// `blocks` is moved from. False where it cannot be marked (above): the caller queues it for a fence.
bool hold_marked_batch(ThreadState& thread, DeviceState& device, std::vector<FreedBlock>& blocks,
                       FenceContext context) noexcept;
// The calling thread `thread`'s batches of `device` whose marks have passed go to its returned list, as
// the fence queue gives a poller's own round back (its small blocks through its cache, the rest to its
// list, past the list's cap to the backend). True when any did.
bool return_passed_batches(ThreadState& thread, DeviceState& device) noexcept;
// Every thread's passed batches of `device` to its returned list (an allocation at the peak, which looks
// in every list next). Takes the registry lock.
void return_every_passed_batch(DeviceState& device) noexcept;
// Moves the marked batches of `thread` for `device` out (its lock held), for a transition to ordered,
// memory pressure or the thread's exit; the device's count of marked bytes drops by theirs.
std::vector<MarkedBatch> take_marked_batches(ThreadState& thread, DeviceState& device) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
