#include "ipc/export_registry.h"

#include <fcntl.h>
#include <iterator>
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
    // The dedup map also finds a block's exports when the program frees it: both entries or neither.
    export_ids_.emplace(dedup, id);
    try {
      exports_.emplace(id, std::move(entry));
    } catch (...) {
      export_ids_.erase(dedup);
      throw;
    }
    export_count_.store(exports_.size(), std::memory_order_relaxed);
    return id;
  } catch (...) {
    return 0;
  }
}

bool ExportRegistry::copy_with_fds(const Export& entry, ExportRecord* out) const noexcept {
  try {
    ExportRecord copy = entry.record;
    for (std::size_t i = 0; i < copy.chunks.size(); ++i) {
      auto fd = chunk_fds_.find(entry.chunk_keys[i]);
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

bool ExportRegistry::find(std::uint64_t id, ExportRecord* out) const noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = exports_.find(id);
  return it != exports_.end() && out != nullptr && copy_with_fds(it->second, out);
}

bool ExportRegistry::find_for_import(std::uint64_t id, pid_t importer, ExportRecord* out) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = exports_.find(id);
  // A retired export's block was freed by the program: like the driver, a new open of it fails.
  if (it == exports_.end() || it->second.retired || out == nullptr) return false;
  ExportRecord copy;
  if (!copy_with_fds(it->second, &copy)) return false;
  try {
    ++it->second.holders[importer];
  } catch (...) {
    for (ExportedChunk& chunk : copy.chunks) ::close(chunk.fd);
    return false;
  }
  *out = std::move(copy);
  return true;
}

bool ExportRegistry::release(std::uint64_t id, pid_t importer) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  auto it = exports_.find(id);
  if (it == exports_.end()) return false;
  auto holder = it->second.holders.find(importer);
  if (holder == it->second.holders.end()) return false;
  if (--holder->second <= 0) it->second.holders.erase(holder);
  return true;
}

bool ExportRegistry::retire_block(std::uint64_t block_base) noexcept {
  if (export_count_.load(std::memory_order_relaxed) == 0) return false;
  std::lock_guard<std::mutex> guard(mutex_);
  bool held = false;
  std::vector<std::uint64_t> ids;
  for (auto it = export_ids_.lower_bound(DedupKey{block_base, 0, 0});
       it != export_ids_.end() && std::get<0>(it->first) == block_base; ++it) {
    auto entry = exports_.find(it->second);
    if (entry == exports_.end()) continue;
    held |= !entry->second.holders.empty();
    try {
      ids.push_back(it->second);
    } catch (...) {
      held = true;  // cannot forget it now: hold the block rather than let a handle open freed memory
    }
  }
  if (held) {
    try {
      retired_bases_.insert(block_base);
    } catch (...) {
      return true;  // no host memory: the block stays held for good, which is safe
    }
    for (std::uint64_t id : ids) exports_[id].retired = true;
    retired_count_.store(retired_bases_.size(), std::memory_order_relaxed);
    return true;
  }
  for (std::uint64_t id : ids) erase_export(exports_.find(id));
  return false;
}

void ExportRegistry::take_released_blocks(bool (*is_alive)(pid_t), std::vector<std::uint64_t>* out) noexcept {
  std::lock_guard<std::mutex> guard(mutex_);
  if (retired_bases_.empty()) return;
  for (auto base = retired_bases_.begin(); base != retired_bases_.end();) {
    bool held = false;
    for (auto it = export_ids_.lower_bound(DedupKey{*base, 0, 0});
         it != export_ids_.end() && std::get<0>(it->first) == *base; ++it) {
      auto entry = exports_.find(it->second);
      if (entry == exports_.end()) continue;
      auto& holders = entry->second.holders;
      if (is_alive != nullptr) {
        for (auto holder = holders.begin(); holder != holders.end();)
          holder = is_alive(holder->first) ? std::next(holder) : holders.erase(holder);
      }
      held |= !holders.empty();
    }
    if (held) {
      ++base;
      continue;
    }
    try {
      out->push_back(*base);
    } catch (...) {
      return;  // asked again on the next call
    }
    for (auto it = export_ids_.lower_bound(DedupKey{*base, 0, 0});
         it != export_ids_.end() && std::get<0>(it->first) == *base;) {
      const std::uint64_t id = it->second;
      ++it;  // erase_export removes the entry `it` was on
      erase_export(exports_.find(id));
    }
    base = retired_bases_.erase(base);
  }
  retired_count_.store(retired_bases_.size(), std::memory_order_relaxed);
}

ExportRegistry::ExportIterator ExportRegistry::erase_export(ExportIterator it) noexcept {
  if (it == exports_.end()) return it;
  export_ids_.erase(DedupKey{it->second.block_base, it->second.record.block_size, it->second.chunk_keys.front()});
  it = exports_.erase(it);
  export_count_.store(exports_.size(), std::memory_order_relaxed);
  return it;
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
    // A retired export's block is still held, so its chunk cannot be released; a live one's holders
    // keep their own mappings.
    it = uses ? erase_export(it) : std::next(it);
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
  retired_bases_.clear();
  export_count_.store(0, std::memory_order_relaxed);
  retired_count_.store(0, std::memory_order_relaxed);
}

}  // namespace gpushim::ipc
