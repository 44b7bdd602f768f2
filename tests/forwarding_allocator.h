// A test decorator's base: every Allocator call goes to the wrapped backend unchanged, so a test that
// logs or counts one call overrides only that one and the rest (the without-growing pair, release,
// stats) keep the backend's answers.
#pragma once

#include <memory>
#include <utility>

#include "allocators/allocator.h"

namespace gpushim::testing {

class ForwardingAllocator : public Allocator {
 public:
  explicit ForwardingAllocator(std::unique_ptr<Allocator> inner) : inner_(std::move(inner)) {}
  void* allocate(std::size_t bytes, StreamHandle stream) noexcept override { return inner_->allocate(bytes, stream); }
  void deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept override {
    inner_->deallocate(p, bytes, stream);
  }
  void* allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept override {
    return inner_->allocate_without_growing(bytes, stream);
  }
  bool can_allocate_without_growing() const noexcept override { return inner_->can_allocate_without_growing(); }
  const std::atomic<std::uint64_t>* lock_wait_counter() const noexcept override {
    return inner_->lock_wait_counter();
  }
  std::size_t release_cached() noexcept override { return inner_->release_cached(); }
  AllocatorStats stats() const noexcept override { return inner_->stats(); }

 protected:
  Allocator& inner() noexcept { return *inner_; }

 private:
  std::unique_ptr<Allocator> inner_;
};

}  // namespace gpushim::testing
