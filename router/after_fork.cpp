// Fork handling (router/after_fork.h).
#include "router/after_fork.h"

#include <algorithm>
#include <mutex>
#include <new>

#include "router/held_for_importers.h"
#include "router/router_state.h"
#include "router/stream_activity.h"
#include "router/thread_state.h"

namespace gpushim::router {

std::atomic<std::uint64_t> g_fork_generation{1};
bool g_forked_child = false;

// In a forked child only the forking thread exists. Locks other parent threads held are reset, their
// per-thread states forgotten, and the parent's devices dropped (its contexts, streams and events do
// not exist in the child; a child that initializes CUDA afresh gets new device states).
void atfork_child() noexcept {
  g_forked_child = true;
  new (&g_devices_lock) std::mutex();
  new (&g_threads_lock) AdaptiveMutex();
  new (&g_captures_lock) std::mutex();
  new (&g_held_for_importers_lock) std::mutex();
  held_for_importers().clear();  // the parent's blocks and the parent's importers
  live_blocks().reset_after_fork();
  threads().clear();
  capturing_streams().clear();
  g_active_captures.store(0);
  g_fork_generation.fetch_add(1);
  reset_stream_activity_after_fork();
  for (auto& device : g_devices) device.store(nullptr);  // the parent's states are leaked on purpose
  // This thread's state may be mid-use in the parent's forking thread only if fork() was called from
  // inside gpushim, which never happens; its batches and returned blocks refer to the parent's devices.
  ThreadState* self = this_thread_state();  // making it here registers it
  if (!self) return;
  self->lock.reset();
  for (PendingBatch& batch : self->batches) (void)batch.take();
  for (std::vector<FreedBlock>& returned : self->returned) returned.clear();
  for (std::uint64_t& bytes : self->returned_bytes) bytes = 0;
  self->returned_devices.store(0, std::memory_order_relaxed);
  for (std::vector<MarkedBatch>& marked : self->marked) marked.clear();
  self->marked_devices.store(0, std::memory_order_relaxed);
  if (std::find(threads().begin(), threads().end(), self) == threads().end()) {
    try {
      threads().push_back(self);
    } catch (...) {
    }
  }
}

}  // namespace gpushim::router
