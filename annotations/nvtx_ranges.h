// NVTX ranges in the "gpushim" domain around the events that take time, so Nsight Systems shows why a
// cudaMalloc was slow. Nothing else is annotated: the hot path (a pool hit) must stay free.
// With no tool attached a range is one relaxed load and a branch.
#pragma once

namespace gpushim::annotations {

enum class SlowEvent {
  arena_growth,    // mapping more physical memory
  cache_release,   // giving cached memory back to the driver
  oom_handling,    // release + retry after an allocation failed
  fence_wait,      // waiting for fenced blocks instead of growing past the peak
  ipc_export,      // cuIpcGetMemHandle on gpushim memory
  ipc_import,      // cuIpcOpenMemHandle of a gpushim handle
};

const char* slow_event_name(SlowEvent event) noexcept;

class ScopedRange {
 public:
  explicit ScopedRange(SlowEvent event) noexcept;
  ~ScopedRange();
  ScopedRange(const ScopedRange&) = delete;
  ScopedRange& operator=(const ScopedRange&) = delete;

 private:
  bool pushed_ = false;
};

}  // namespace gpushim::annotations
