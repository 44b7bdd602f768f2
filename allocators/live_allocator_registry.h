// Live allocators of one kind by id, for the per-thread caches in front of them (ThreadCacheAllocator,
// SlabAllocator). A thread keeps its caches by owner id; when it exits it gives them back only to the
// owners that still exist, and ids are never reused, so a stale id matches none. One mutex per kind
// guards registration, destruction and thread exit (and, for the slab, the remote flush of every
// thread's magazines).
//
// A forked child has only the forking thread: a lock another parent thread held would never be
// released. The child handler resets the registry's mutex, registers the owner-biased locks' membarrier
// again, and asks each live allocator to reset its own locks (`reset_locks_after_fork()`). The other
// threads' caches stay where they are.
//
// Leaked on purpose: threads of the host program may exit after static destructors have run.
#pragma once

#include <pthread.h>

#include <cstdint>
#include <mutex>
#include <new>
#include <unordered_map>

#include "allocators/owner_biased_lock.h"

namespace gpushim {

template <typename Allocator>
class LiveAllocatorRegistry {
 public:
  static LiveAllocatorRegistry& instance() noexcept {
    static auto* registry = new LiveAllocatorRegistry;
    return *registry;
  }

  std::mutex& mutex() noexcept { return mutex_; }

  // A new id for `allocator`, registered; 0 when no host memory was left to register it (its threads
  // then keep no caches for it).
  std::uint64_t add(Allocator* allocator) noexcept {
    static const bool fork_handler = pthread_atfork(nullptr, nullptr, &reset_locks_in_child) == 0;
    (void)fork_handler;
    std::lock_guard<std::mutex> lock(mutex_);
    const std::uint64_t id = next_id_++;
    try {
      live_.emplace(id, allocator);
    } catch (...) {
      return 0;
    }
    return id;
  }

  // The rest with mutex() held.
  void remove_locked(std::uint64_t id) noexcept { live_.erase(id); }
  Allocator* find_locked(std::uint64_t id) const noexcept {
    const auto it = live_.find(id);
    return it == live_.end() ? nullptr : it->second;
  }

 private:
  LiveAllocatorRegistry() = default;

  static void reset_locks_in_child() noexcept {
    LiveAllocatorRegistry& registry = instance();
    new (&registry.mutex_) std::mutex();
    OwnerBiasedLock::register_again_after_fork();
    for (auto& [id, allocator] : registry.live_) allocator->reset_locks_after_fork();
  }

  std::mutex mutex_;
  std::unordered_map<std::uint64_t, Allocator*> live_;
  std::uint64_t next_id_ = 1;
};

}  // namespace gpushim
