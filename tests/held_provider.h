// A memory provider that holds a caller inside map() or unmap() until the test lets go: the vmm arena
// calls unmap() under its lock (release_cached) and map() outside it, so a test can hold the lock, or
// a growth, as long as it needs (tests/vmm_arena_test.cpp, tests/arena_shards_test.cpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <thread>

#include "providers/memory_provider.h"

namespace gpushim {

// A provider whose map() waits while `hold` is set, and whose unmap() waits while `hold_unmap` is: an
// arena that gives memory back holds its lock meanwhile.
class HeldProvider final : public MemoryProvider {
 public:
  explicit HeldProvider(MemoryProvider& inner) noexcept : inner_(inner) {}
  std::size_t granularity() const noexcept override { return inner_.granularity(); }
  void* reserve(std::size_t bytes) noexcept override { return inner_.reserve(bytes); }
  void release_reservation(void* base, std::size_t bytes) noexcept override { inner_.release_reservation(base, bytes); }
  bool map(void* addr, std::size_t bytes) noexcept override {
    ++maps;
    mapping = true;
    while (hold) std::this_thread::yield();
    return inner_.map(addr, bytes);
  }
  void unmap(void* addr, std::size_t bytes) noexcept override {
    unmapping = true;
    while (hold_unmap) std::this_thread::yield();
    inner_.unmap(addr, bytes);
  }
  std::size_t bytes_mapped() const noexcept override { return inner_.bytes_mapped(); }

  std::atomic<bool> hold{false};
  std::atomic<bool> mapping{false};
  std::atomic<bool> hold_unmap{false};
  std::atomic<bool> unmapping{false};
  std::atomic<int> maps{0};

 private:
  MemoryProvider& inner_;
};

}  // namespace gpushim
