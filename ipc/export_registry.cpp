#include "ipc/export_registry.h"

#include <fcntl.h>
#include <unistd.h>

namespace gpushim::ipc {

int ExportRegistry::chunk_fd(std::uint64_t chunk_key) const noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = chunk_fds_.find(chunk_key);
  return it == chunk_fds_.end() ? -1 : it->second;
}

bool ExportRegistry::add_chunk(std::uint64_t chunk_key, int fd) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  try {
    if (chunk_fds_.emplace(chunk_key, fd).second) return true;
  } catch (...) {
  }
  ::close(fd);
  return false;
}

std::uint64_t ExportRegistry::add_export(std::uint64_t block_base, const std::vector<std::uint64_t>& chunk_keys,
                                         const ExportRecord& record) noexcept {
  if (chunk_keys.empty() || chunk_keys.size() != record.chunks.size()) return 0;
  std::lock_guard<std::mutex> guard(mutex_);
  for (std::uint64_t key : chunk_keys) {
    if (chunk_fds_.count(key) == 0) return 0;
  }
  try {
    const DedupKey dedup{block_base, record.block_size, chunk_keys.front()};
    auto known = export_ids_.find(dedup);
    if (known != export_ids_.end()) return known->second;
    const std::uint64_t id = next_id_++;
    Export entry;
    entry.record = record;
    for (ExportedChunk& chunk : entry.record.chunks) chunk.fd = -1;
    entry.chunk_keys = chunk_keys;
    entry.block_base = block_base;
    exports_.emplace(id, std::move(entry));
    try {
      export_ids_.emplace(dedup, id);
    } catch (...) {
      // Without the dedup entry the export still works; a second export just gets a second id.
    }
    return id;
  } catch (...) {
    return 0;
  }
}

bool ExportRegistry::find(std::uint64_t id, ExportRecord* out) const noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = exports_.find(id);
  if (it == exports_.end() || out == nullptr) return false;
  try {
    ExportRecord copy = it->second.record;
    for (std::size_t i = 0; i < copy.chunks.size(); ++i) {
      auto fd = chunk_fds_.find(it->second.chunk_keys[i]);
      int dup_fd = fd == chunk_fds_.end() ? -1 : ::fcntl(fd->second, F_DUPFD_CLOEXEC, 0);
      if (dup_fd < 0) {
        for (std::size_t j = 0; j < i; ++j) ::close(copy.chunks[j].fd);
        return false;
      }
      copy.chunks[i].fd = dup_fd;
    }
    *out = std::move(copy);
    return true;
  } catch (...) {
    return false;
  }
}

bool ExportRegistry::forget_chunk(std::uint64_t chunk_key) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  auto chunk = chunk_fds_.find(chunk_key);
  if (chunk == chunk_fds_.end()) return false;
  ::close(chunk->second);
  chunk_fds_.erase(chunk);
  for (auto it = exports_.begin(); it != exports_.end();) {
    bool uses = false;
    for (std::uint64_t key : it->second.chunk_keys) uses |= key == chunk_key;
    if (!uses) {
      ++it;
      continue;
    }
    export_ids_.erase(DedupKey{it->second.block_base, it->second.record.block_size, it->second.chunk_keys.front()});
    it = exports_.erase(it);
  }
  return true;
}

std::size_t ExportRegistry::chunk_count() const noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  return chunk_fds_.size();
}

std::size_t ExportRegistry::export_count() const noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  return exports_.size();
}

void ExportRegistry::clear() noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  for (auto& [key, fd] : chunk_fds_) ::close(fd);
  chunk_fds_.clear();
  exports_.clear();
  export_ids_.clear();
}

}  // namespace gpushim::ipc
