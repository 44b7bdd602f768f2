// A test backend that serves nothing and records what is given back to it: where a test checks which
// blocks reached the backend (the fence queue's give-backs, the returned lists' surplus).
#pragma once

#include <cstddef>
#include <set>

#include "allocators/allocator.h"

namespace gpushim::testing {

class RecordingBackend final : public Allocator {
 public:
  const char* name() const noexcept override { return "fake"; }
  void* allocate(std::size_t, StreamHandle) noexcept override { return nullptr; }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override {
    returned.insert(p);
    returned_bytes += bytes;
    last_stream = stream;
  }
  void deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept override {
    ++batch_calls;
    for (std::size_t i = 0; i < count; ++i) deallocate(blocks[i].p, blocks[i].bytes, blocks[i].stream);
  }
  std::size_t release_cached() noexcept override { return 0; }
  AllocatorStats stats() const noexcept override { return {}; }
  std::set<void*> returned;
  std::size_t returned_bytes = 0;
  StreamHandle last_stream = 0;
  int batch_calls = 0;  // deallocate_batch calls (each also counted block by block above)
};

}  // namespace gpushim::testing
