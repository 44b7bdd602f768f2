#include "router/cuda_fence_events.h"

#include <algorithm>
#include <new>

#include "config/settings.h"
#include "diagnostics/log.h"
#include "driver/real_driver.h"
#include "driver/scoped_context.h"
#include "router/stream_activity.h"

namespace gpushim {

void CudaFenceEvents::set_default_context(CUcontext context) noexcept {
  CUcontext expected = nullptr;
  default_context_.compare_exchange_strong(expected, context);
}

void CudaFenceEvents::add_nonblocking_stream(CUstream stream, CUcontext context) noexcept {
  std::lock_guard<std::mutex> guard(streams_lock_);
  try {
    nonblocking_streams_.push_back({stream, context});
  } catch (...) {
    // Without host memory this stream goes unfenced; nothing safer is possible.
  }
}

void CudaFenceEvents::remove_stream(CUstream stream) noexcept {
  std::lock_guard<std::mutex> guard(streams_lock_);
  nonblocking_streams_.erase(std::remove_if(nonblocking_streams_.begin(), nonblocking_streams_.end(),
                                            [stream](const TrackedStream& s) { return s.stream == stream; }),
                             nonblocking_streams_.end());
}

CUevent CudaFenceEvents::acquire_event(CUcontext context) noexcept {
  {
    std::lock_guard<std::mutex> guard(pool_lock_);
    for (std::size_t i = free_events_.size(); i-- > 0;) {
      if (free_events_[i].context != context) continue;
      CUevent event = reinterpret_cast<CUevent>(free_events_[i].event);
      free_events_[i] = free_events_.back();
      free_events_.pop_back();
      return event;
    }
  }
  CUevent event = nullptr;
  if (real_driver().cuEventCreate(&event, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) return nullptr;
  return event;
}

bool CudaFenceEvents::record_on(CUcontext context, CUstream stream, Fence* out) noexcept {
  CUevent event = acquire_event(context);
  if (!event) return false;
  if (real_driver().cuEventRecord(event, stream) != CUDA_SUCCESS) {
    real_driver().cuEventDestroy(event);
    return false;
  }
  recorded_.fetch_add(1, std::memory_order_relaxed);
  try {
    out->events.push_back({context, reinterpret_cast<std::uintptr_t>(event)});
  } catch (...) {
    // Nothing to wait on: the caller treats a fence it cannot complete as never complete.
    return false;
  }
  return true;
}

struct CudaFenceEvents::ActiveStreamsFence {
  CudaFenceEvents& events;
  CUcontext batch_context;
  Fence* out;
  bool legacy_asked = false;
  CUevent legacy = nullptr;  // recorded on the batch context's legacy stream when it still had work
};

bool CudaFenceEvents::fence_active_stream(const router::ActiveStream& active, void* arg) noexcept {
  ActiveStreamsFence& fence = *static_cast<ActiveStreamsFence*>(arg);
  const RealDriver& driver = real_driver();
  // A blocking stream already waits for the legacy stream's earlier work; a non-blocking one is made to,
  // unless that work has all finished (one question, where the waits are a call per stream).
  if (!active.blocking && !fence.legacy_asked) {
    fence.legacy_asked = true;
    ScopedContext scope(fence.batch_context);
    if (!scope.ok()) return false;
    if (driver.cuStreamQuery(CU_STREAM_LEGACY) != CUDA_SUCCESS) {
      CUevent legacy = fence.events.acquire_event(fence.batch_context);
      if (!legacy) return false;
      if (driver.cuEventRecord(legacy, CU_STREAM_LEGACY) != CUDA_SUCCESS) {
        driver.cuEventDestroy(legacy);
        return false;
      }
      fence.legacy = legacy;
    }
  }
  ScopedContext scope(active.context);
  if (!scope.ok()) return false;
  // The fence event first, the wait second: queued the other way round, the fence would wait for the
  // legacy backlog again. (A shared event was recorded before this wait too.)
  if (!fence.events.fence_stream(active, fence.out)) return false;
  return active.blocking || !fence.legacy ||
         driver.cuStreamWaitEvent(active.stream, fence.legacy, 0) == CUDA_SUCCESS;
}

bool CudaFenceEvents::fence_stream(const router::ActiveStream& active, Fence* out) noexcept {
  answers_.visit(active.serial);
  StreamFence* newest = nullptr;
  for (StreamFence& f : stream_fences_) {
    if (f.serial != active.serial) continue;
    newest = &f;
    f.visited = true;
    break;
  }
  if (newest && newest->word == active.word) {
    // Nothing queued on the stream since that record: the event still covers all of its work.
    try {
      out->events.push_back(
          {active.context, reinterpret_cast<std::uintptr_t>(newest->event), true, active.serial, newest->sequence});
    } catch (...) {
      return false;
    }
    shared_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> guard(pool_lock_);
    for (SharedEvent& e : shared_events_) {
      if (e.event != newest->event) continue;
      ++e.references;
      break;
    }
    return true;
  }
  if (!record_on(active.context, active.stream, out)) return false;
  FenceEvent& recorded = out->events.back();
  recorded.stream_serial = active.serial;
  recorded.sequence = ++next_sequence_;
  // A submission in flight (begun before the word was read) may be queued after this record: the event
  // is this fence's alone (what it covers is uncertain, not where it stands in the stream's order).
  if ((active.word & router::kInFlightMask) != 0) return true;
  CUevent event = reinterpret_cast<CUevent>(recorded.event);
  std::lock_guard<std::mutex> guard(pool_lock_);
  try {
    shared_events_.push_back({event, active.context, 2});  // this fence and the stream's entry
  } catch (...) {
    return true;  // no host memory: not shared, which is only slower
  }
  if (newest) {
    drop_reference(newest->event);
    *newest = {active.serial, event, active.word, true, recorded.sequence};
  } else {
    try {
      stream_fences_.push_back({active.serial, event, active.word, true, recorded.sequence});
    } catch (...) {
      shared_events_.pop_back();
      return true;
    }
  }
  recorded.shared = true;
  return true;
}

void CudaFenceEvents::forget_unvisited_streams() noexcept {
  answers_.forget_unvisited();
  std::lock_guard<std::mutex> guard(pool_lock_);
  for (std::size_t i = stream_fences_.size(); i-- > 0;) {
    if (stream_fences_[i].visited) continue;
    drop_reference(stream_fences_[i].event);
    stream_fences_[i] = stream_fences_.back();
    stream_fences_.pop_back();
  }
}

void CudaFenceEvents::drop_reference(CUevent event) noexcept {
  for (std::size_t i = 0; i < shared_events_.size(); ++i) {
    SharedEvent& e = shared_events_[i];
    if (e.event != event) continue;
    if (--e.references == 0) {
      try {
        free_events_.push_back({e.context, reinterpret_cast<std::uintptr_t>(e.event)});
      } catch (...) {
        real_driver().cuEventDestroy(e.event);
      }
      shared_events_[i] = shared_events_.back();
      shared_events_.pop_back();
    }
    return;
  }
}

FenceEvents::Record CudaFenceEvents::record_device_fence(FenceContext batch_context, Fence* out) noexcept {
  if (active_captures_.load(std::memory_order_acquire) > 0) return Record::postponed;
  CUcontext context = batch_context ? static_cast<CUcontext>(batch_context) : default_context_.load();
  if (!context) return Record::postponed;
  if (settings().free_fence != Settings::FreeFence::always) {
    // Lock order: the fence queue's driver lock (held by our caller), then the activity lock.
    for (StreamFence& f : stream_fences_) f.visited = false;
    answers_.begin_walk();
    ActiveStreamsFence fence{*this, context, out};
    const router::ActiveStreamWalk walk = router::visit_active_streams(&fence_active_stream, &fence);
    // A stream not active now has to queue work before it is again, which changes its word.
    if (walk == router::ActiveStreamWalk::visited || walk == router::ActiveStreamWalk::none_active)
      forget_unvisited_streams();
    if (fence.legacy) {
      // cuStreamWaitEvent took its state at the call: the event can serve another fence right away.
      Fence scratch;
      try {
        scratch.events.push_back({context, reinterpret_cast<std::uintptr_t>(fence.legacy)});
        release(scratch);
      } catch (...) {
        real_driver().cuEventDestroy(fence.legacy);
      }
    }
    if (walk == router::ActiveStreamWalk::visited) return Record::recorded;
    // A partial fence proves nothing: drop it and fence the whole device instead (the waits already
    // queued only order more).
    if (walk == router::ActiveStreamWalk::stopped) release(*out);
  }
  // Held while recording: a stream destroyed by another thread between a copy of the list and the
  // record would be a use after destroy inside the driver (seen as a crash in cuEventRecord on the
  // H100). remove_stream() takes this lock before the real cuStreamDestroy runs.
  std::lock_guard<std::mutex> streams_guard(streams_lock_);
  const std::vector<TrackedStream>& streams = nonblocking_streams_;
  bool ok;
  {
    ScopedContext scope(context);
    // A destroyed stream is in no list, but its queued work may still touch a block of this batch.
    if (scope.ok() && !router::order_legacy_after_destroyed_streams()) {
      static bool reported = false;
      log_once(&reported, LogLevel::debug,
               "device %d: a stream destroyed during a capture still had work; freed blocks may not wait for it",
               device_);
    }
    ok = scope.ok() && record_on(context, CU_STREAM_LEGACY, out);
  }
  for (const TrackedStream& s : streams) {
    if (!ok) break;
    ScopedContext scope(s.context);
    ok = scope.ok() && record_on(s.context, s.stream, out);
  }
  if (!ok) {
    // A partial fence would let a block go back too early: drop it and try again at the next poll.
    static bool reported = false;
    log_once(&reported, LogLevel::warn, "device %d: could not record a free fence; freed blocks are held",
             device_);
    release(*out);
    return Record::postponed;
  }
  return Record::recorded;
}

FenceEvents::Record CudaFenceEvents::record_stream_fence(FenceContext batch_context, StreamHandle stream,
                                                         Fence* out) noexcept {
  if (active_captures_.load(std::memory_order_acquire) > 0) return Record::postponed;
  CUcontext context = batch_context ? static_cast<CUcontext>(batch_context) : default_context_.load();
  if (!context) return Record::postponed;
  ScopedContext scope(context);
  if (!scope.ok() || !record_on(context, reinterpret_cast<CUstream>(stream), out)) {
    release(*out);
    return Record::postponed;
  }
  return Record::recorded;
}

FenceEvents::Status CudaFenceEvents::query(Fence& fence) noexcept {
  if (fence.events.empty()) return Status::pending;  // never recorded: cannot prove anything
  for (; fence.complete_events < fence.events.size(); ++fence.complete_events) {
    const FenceEvent& e = fence.events[fence.complete_events];
    // A newer event of the same stream was found complete: so is this one (the caller holds the fence
    // queue's driver lock, as for every query).
    if (answers_.known_complete(e.stream_serial, e.sequence)) continue;
    // cuEventQuery needs no particular current context. Errors other than NOT_READY (a destroyed
    // context, a sticky launch failure) mean no more work will run on the block: complete.
    queried_.fetch_add(1, std::memory_order_relaxed);
    if (real_driver().cuEventQuery(reinterpret_cast<CUevent>(e.event)) == CUDA_ERROR_NOT_READY)
      return Status::pending;
    answers_.found_complete(e.stream_serial, e.sequence);
  }
  return Status::complete;
}

FenceEventCounts CudaFenceEvents::counts() const noexcept {
  FenceEventCounts counts;
  counts.recorded = recorded_.load(std::memory_order_relaxed);
  counts.shared = shared_.load(std::memory_order_relaxed);
  counts.queried = queried_.load(std::memory_order_relaxed);
  return counts;
}

void CudaFenceEvents::synchronize(const Fence& fence) noexcept {
  for (const FenceEvent& e : fence.events) real_driver().cuEventSynchronize(reinterpret_cast<CUevent>(e.event));
}

void CudaFenceEvents::release(Fence& fence) noexcept {
  std::lock_guard<std::mutex> guard(pool_lock_);
  for (const FenceEvent& e : fence.events) {
    if (e.shared) {
      drop_reference(reinterpret_cast<CUevent>(e.event));
      continue;
    }
    try {
      free_events_.push_back(e);
    } catch (...) {
      real_driver().cuEventDestroy(reinterpret_cast<CUevent>(e.event));
    }
  }
  fence.events.clear();
  fence.complete_events = 0;
}

void CudaFenceEvents::reset_after_fork() noexcept {
  new (&streams_lock_) std::mutex();
  new (&pool_lock_) std::mutex();
  // The parent's contexts, streams and events mean nothing in the child.
  nonblocking_streams_.clear();
  free_events_.clear();
  shared_events_.clear();
  stream_fences_.clear();
  answers_.clear();
  default_context_.store(nullptr);
}

}  // namespace gpushim
