// What an exporting process has shared with cuIpcGetMemHandle: the physical chunks (one file
// descriptor each, from cuMemExportToShareableHandle) and the exports (a block = a run of chunks +
// where the block starts in them). Plain C++ with no CUDA call, so it is tested on the CPU with memfds.
//
// Lifetime: a chunk's fd stays open while the exporter keeps that physical memory mapped; the provider
// tells us when it releases it (forget_chunk), and we close the fd then. An fd is one reference to the
// physical memory (cuMemRelease: "freed when all outstanding mappings ... and all outstanding
// references to the handle (including its shareable counterparts) are released"), so closing it late
// would keep memory alive that the arena has given back; closing it early would break an importer that
// has the handle but has not opened it yet. Importers that did open hold their own reference.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace gpushim::ipc {

struct ExportedChunk {
  std::uint64_t offset_in_span = 0;  // where this chunk starts, from the start of the first one
  std::uint64_t size = 0;
  int fd = -1;                       // in find()'s answer: a dup the caller must close
};

struct ExportRecord {
  std::uint64_t block_size = 0;
  std::uint64_t offset_in_span = 0;  // the block's start, from the start of the first chunk
  int device = -1;
  std::vector<ExportedChunk> chunks;
};

class ExportRegistry {
 public:
  ExportRegistry() = default;
  ~ExportRegistry() { clear(); }
  ExportRegistry(const ExportRegistry&) = delete;
  ExportRegistry& operator=(const ExportRegistry&) = delete;

  // The fd already exported for physical chunk `chunk_key` (the CUmemGenericAllocationHandle), or -1.
  int chunk_fd(std::uint64_t chunk_key) const noexcept;
  // Takes ownership of `fd` for `chunk_key`. False (fd closed) if the key is already known or on
  // allocation failure.
  bool add_chunk(std::uint64_t chunk_key, int fd) noexcept;

  // Records an export of a block at `block_base` covered by `chunk_keys` (in address order, each
  // already added with its offset and size in `record.chunks`, fds ignored). The same block exported
  // again gets the same id. Returns the id (> 0), or 0 if a chunk is unknown or on allocation failure.
  std::uint64_t add_export(std::uint64_t block_base, const std::vector<std::uint64_t>& chunk_keys,
                           const ExportRecord& record) noexcept;

  // Copies export `id` with fresh dups of its chunks' fds (the caller closes them). False when the id
  // is unknown, or one of its chunks was released since (the export is gone), or dup failed.
  bool find(std::uint64_t id, ExportRecord* out) const noexcept;

  // The exporter released physical chunk `chunk_key`: close its fd and drop the exports that use it.
  // True if it was known.
  bool forget_chunk(std::uint64_t chunk_key) noexcept;

  std::size_t chunk_count() const noexcept;
  std::size_t export_count() const noexcept;

  // Closes every fd and forgets everything (the child of a fork: the exports are the parent's).
  void clear() noexcept;

 private:
  struct Export {
    ExportRecord record;                  // fds unset
    std::vector<std::uint64_t> chunk_keys;
    std::uint64_t block_base = 0;
  };
  using DedupKey = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>;  // base, size, first chunk

  mutable std::mutex mutex_;
  std::map<std::uint64_t, int> chunk_fds_;       // chunk key -> fd we own
  std::map<std::uint64_t, Export> exports_;      // id -> export
  std::map<DedupKey, std::uint64_t> export_ids_; // same block exported again -> same id
  std::uint64_t next_id_ = 1;
};

}  // namespace gpushim::ipc
