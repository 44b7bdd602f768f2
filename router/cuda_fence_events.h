// FenceEvents over the real driver, for one device: events from a per-device pool
// (CU_EVENT_DISABLE_TIMING: a timing event costs more to record and we never read times).
//
// A cuMemFree batch closed while streams carry work (router/stream_activity.h) is fenced by one event on
// every active stream. The legacy stream is asked (cuStreamQuery): when it still has work, every active
// non-blocking stream is made to wait for the legacy stream's work issued so far; the legacy stream
// itself is not waited for, so a block does not wait for the legacy backlog when the CPU runs far ahead
// of it (docs/free-safety.md says why this is exact). When it has none, there is nothing to order after.
//
// Stream fences are shared: an event recorded on a stream while none of its submissions was in flight
// covers all of that stream's work for as long as the stream queues nothing new (its activity word is
// unchanged). A later fence takes a reference to that event instead of recording another one. With a
// stream per thread, 16 threads closing batches of large blocks would otherwise record an event on all
// 16 streams for nearly every free; most streams queued nothing since the last fence, so a fence now
// records only on the streams that did.
//
// Answers are shared too (router/stream_answers.h): a query that finds a stream's event complete
// answers for every event recorded there before it, in any fence.
//
// Otherwise (no stream active, work on a per-thread default stream, a destroyed stream still counted,
// GPUSHIM_FREE_FENCE=always) the fence is device-wide: an event on CU_STREAM_LEGACY and on every live
// non-blocking stream of the device. The legacy default stream waits for all earlier work of every
// *blocking* stream of its context (per-thread default streams included), so one event on it covers
// them all; non-blocking streams are exempt from that rule, so each gets its own event. gpushim learns of
// them from the shim's stream-creation hook (router::on_stream_created).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include <cuda.h>

#include "router/free_fence_queue.h"
#include "router/stream_answers.h"

namespace gpushim {
namespace router {
struct ActiveStream;
}

class CudaFenceEvents final : public FenceEvents {
 public:
  // `active_captures`: stream captures in progress in the process. While any is active, no fence is
  // recorded: touching the legacy stream during a global-mode capture invalidates the capture.
  // `driver_backed`: the backend frees with driver calls (passthrough, mempool), which must wait
  // while a capture is active.
  CudaFenceEvents(int device, const std::atomic<int>& active_captures, bool driver_backed) noexcept
      : device_(device), active_captures_(active_captures), driver_backed_(driver_backed) {}

  // The context used when a batch has none (orphans): the first context seen on this device.
  void set_default_context(CUcontext context) noexcept;
  void add_nonblocking_stream(CUstream stream, CUcontext context) noexcept;
  void remove_stream(CUstream stream) noexcept;

  Record record_device_fence(FenceContext context, Fence* out) noexcept override;
  Record record_stream_fence(FenceContext context, StreamHandle stream, Fence* out) noexcept override;
  Status query(Fence& fence) noexcept override;
  void synchronize(const Fence& fence) noexcept override;
  void release(Fence& fence) noexcept override;
  bool may_give_back() noexcept override {
    return !driver_backed_ || active_captures_.load(std::memory_order_acquire) == 0;
  }
  FenceEventCounts counts() const noexcept override;

  void reset_after_fork() noexcept;

 private:
  struct TrackedStream {
    CUstream stream;
    CUcontext context;
  };
  // An active stream's newest shareable event: it covers the stream's work while its word is `word`.
  struct StreamFence {
    std::uint64_t serial;  // router::ActiveStream::serial: this registration of the stream
    CUevent event;         // holds one reference
    std::uint64_t word;
    bool visited;          // in the current walk; the others are dropped after it
    std::uint64_t sequence;  // the event's place in the record order (FenceEvent::sequence)
  };
  struct SharedEvent {
    CUevent event;
    CUcontext context;
    int references;  // fences and StreamFence entries that hold it
  };
  struct ActiveStreamsFence;
  // One active stream's part of a batch fence (a router::ActiveStreamVisitor; `arg` an ActiveStreamsFence).
  static bool fence_active_stream(const router::ActiveStream& active, void* arg) noexcept;
  // The stream's event for a fence: its newest one while it still covers the stream, else a new record.
  bool fence_stream(const router::ActiveStream& active, Fence* out) noexcept;  // with its context current
  // Drops the entries of streams the last walk did not visit (idle or destroyed since).
  void forget_unvisited_streams() noexcept;
  bool record_on(CUcontext context, CUstream stream, Fence* out) noexcept;  // with `context` current
  CUevent acquire_event(CUcontext context) noexcept;                        // with `context` current
  void drop_reference(CUevent event) noexcept;                              // pool_lock_ held

  const int device_;
  const std::atomic<int>& active_captures_;
  const bool driver_backed_;
  std::atomic<CUcontext> default_context_{nullptr};
  std::mutex streams_lock_;
  std::vector<TrackedStream> nonblocking_streams_;
  std::mutex pool_lock_;
  std::vector<FenceEvent> free_events_;  // events are context-bound: each remembers its context
  std::vector<SharedEvent> shared_events_;  // pool_lock_ held
  // Only record_device_fence and query read or write these: their caller holds the fence queue's driver
  // lock (only its holder records device fences and queries).
  std::vector<StreamFence> stream_fences_;
  // Kept apart from stream_fences_: an event recorded while a submission was in flight is not shared,
  // but its answer is.
  StreamAnswers answers_;
  std::uint64_t next_sequence_ = 0;
  // GPUSHIM_STATS (counts()): relaxed, a driver call's company.
  std::atomic<std::uint64_t> recorded_{0}, shared_{0}, queried_{0};
};

}  // namespace gpushim
