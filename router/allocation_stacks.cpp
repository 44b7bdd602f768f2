#include "router/allocation_stacks.h"

#include <sys/mman.h>

#include <cstring>
#include <new>

namespace gpushim {
namespace {

std::uint64_t hash_frames(const std::uint64_t* frames, int count) noexcept {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ std::uint64_t(count);
  for (int i = 0; i < count; ++i) {
    h ^= frames[i];
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  return h;
}

}  // namespace

bool StackStore::init(int depth) noexcept {
  if (depth <= 0 || ready()) return ready();
  // mmap, not new: the pages cost nothing until a stack lands in them, and the store is never freed.
  const std::size_t entry_bytes = sizeof(Entry) * kCapacity;
  const std::size_t frame_bytes = sizeof(std::uint64_t) * kCapacity * std::size_t(depth);
  void* memory = mmap(nullptr, entry_bytes + frame_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return false;
  entries_ = static_cast<Entry*>(memory);
  for (std::uint32_t i = 0; i < kCapacity; ++i) new (&entries_[i]) Entry();
  frames_ = reinterpret_cast<std::uint64_t*>(static_cast<char*>(memory) + entry_bytes);
  depth_ = depth;
  return true;
}

std::uint32_t StackStore::intern(const std::uint64_t* frames, int count) noexcept {
  if (!ready() || count <= 0) return 0;
  if (count > depth_) count = depth_;
  const std::uint64_t hash = hash_frames(frames, count);
  std::uint32_t slot = std::uint32_t(hash) & (kCapacity - 1);
  for (std::uint32_t probe = 0; probe < kMaxProbes; ++probe, slot = (slot + 1) & (kCapacity - 1)) {
    Entry& entry = entries_[slot];
    std::uint32_t state = entry.state.load(std::memory_order_acquire);
    if (state == kEmpty) {
      if (entry.state.compare_exchange_strong(state, kWriting, std::memory_order_acq_rel)) {
        std::memcpy(frames_ + std::size_t(slot) * std::size_t(depth_), frames, sizeof(std::uint64_t) * count);
        entry.count = std::uint32_t(count);
        entry.hash = hash;
        entry.state.store(kReady, std::memory_order_release);
        return slot + 1;
      }
    }
    // Another thread may be writing this very stack: passing over it costs at most a duplicate entry.
    if (state != kReady) continue;
    if (entry.hash == hash && entry.count == std::uint32_t(count) &&
        std::memcmp(frames_ + std::size_t(slot) * std::size_t(depth_), frames, sizeof(std::uint64_t) * count) == 0)
      return slot + 1;
  }
  return 0;
}

int StackStore::frames_of(std::uint32_t id, const std::uint64_t** frames) const noexcept {
  if (!ready() || id == 0 || id > kCapacity) return 0;
  const Entry& entry = entries_[id - 1];
  if (entry.state.load(std::memory_order_acquire) != kReady) return 0;
  *frames = frames_ + std::size_t(id - 1) * std::size_t(depth_);
  return int(entry.count);
}

}  // namespace gpushim
