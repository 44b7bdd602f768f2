// FenceEvents over the real driver, for one device: events from a per-device pool
// (CU_EVENT_DISABLE_TIMING: a timing event costs more to record and we never read times).
//
// A cuMemFree batch closed while streams carry work (router/stream_activity.h) is fenced by one event on
// every active stream, and every active non-blocking stream is made to wait for the legacy stream's work
// issued so far; the legacy stream itself is not waited for, so a block does not wait for the legacy
// backlog when the CPU runs far ahead of it (docs/free-safety.md says why this is exact).
//
// Otherwise (no stream active, work on a per-thread default stream, a destroyed stream still counted,
// GPUSHIM_FREE_FENCE=always) the fence is device-wide: an event on CU_STREAM_LEGACY and on every live
// non-blocking stream of the device. The legacy default stream waits for all earlier work of every
// *blocking* stream of its context (per-thread default streams included), so one event on it covers
// them all; non-blocking streams are exempt from that rule, so each gets its own event. gpushim learns of
// them from the shim's stream-creation hook (router::on_stream_created).
#pragma once

#include <atomic>
#include <mutex>
#include <vector>

#include <cuda.h>

#include "router/free_fence_queue.h"

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
  Status query(const Fence& fence) noexcept override;
  void synchronize(const Fence& fence) noexcept override;
  void release(Fence& fence) noexcept override;
  bool may_give_back() noexcept override {
    return !driver_backed_ || active_captures_.load(std::memory_order_acquire) == 0;
  }

  void reset_after_fork() noexcept;

 private:
  struct TrackedStream {
    CUstream stream;
    CUcontext context;
  };
  struct ActiveStreamsFence;
  // One active stream's part of a batch fence (a router::ActiveStreamVisitor; `arg` an ActiveStreamsFence).
  static bool fence_active_stream(const router::ActiveStream& active, void* arg) noexcept;
  bool record_on(CUcontext context, CUstream stream, Fence* out) noexcept;  // with `context` current
  CUevent acquire_event(CUcontext context) noexcept;                        // with `context` current

  const int device_;
  const std::atomic<int>& active_captures_;
  const bool driver_backed_;
  std::atomic<CUcontext> default_context_{nullptr};
  std::mutex streams_lock_;
  std::vector<TrackedStream> nonblocking_streams_;
  std::mutex pool_lock_;
  std::vector<FenceEvent> free_events_;  // events are context-bound: each remembers its context
};

}  // namespace gpushim
