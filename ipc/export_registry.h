// What an exporting process has shared with cuIpcGetMemHandle: the physical chunks (one file
// descriptor each, from cuMemExportToShareableHandle), the exports (a block = a run of chunks + where
// the block starts in them, or a block of a driver memory pool), and which other processes hold each
// export open. Plain C++ with no CUDA call, so it is tested on the CPU with memfds.
//
// Lifetime: a chunk's fd stays open while the exporter keeps that physical memory mapped; the provider
// tells us when it releases it (forget_chunk), and we close the fd then. An fd is one reference to the
// physical memory (cuMemRelease: "freed when all outstanding mappings ... and all outstanding
// references to the handle (including its shareable counterparts) are released"), so closing it late
// would keep memory alive that the arena has given back; closing it early would break an importer that
// has the handle but has not opened it yet. Importers that did open hold their own reference.
//
// Holders: the driver keeps cuMemAlloc memory alive while another process has it open, even after the
// exporter's cuMemFree. gpushim does the same for its blocks: the server counts each importer that
// fetched an export (by pid) until it sends a release, and the program's free of a block that is still
// held is deferred (retire_block) until the last holder releases it or exits (take_released_blocks).
// Without this an arena would hand the block to the next allocation while the importer still writes it.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <sys/types.h>
#include <tuple>
#include <vector>

namespace gpushim::ipc {

struct ExportedChunk {
  std::uint64_t offset_in_span = 0;  // where this chunk starts, from the start of the first one
  std::uint64_t size = 0;
  int fd = -1;                       // in find()'s answer: a dup the caller must close
};

// How the importer maps an export.
enum class ExportKind : std::uint32_t {
  mapped_chunks = 0,  // VMM physical chunks, one fd each (the arena backends' memory)
  pool_pointer = 1,   // a block of a driver memory pool (the mempool backend): chunks holds one entry,
                      // the pool's fd (cuMemPoolExportToShareableHandle), and pool_pointer_data names the
                      // block in it (cuMemPoolExportPointer)
};
constexpr std::size_t kPoolPointerDataSize = 64;  // sizeof(CUmemPoolPtrExportData), checked in cuda_ipc.cpp

struct ExportRecord {
  ExportKind kind = ExportKind::mapped_chunks;
  std::uint64_t block_size = 0;
  std::uint64_t offset_in_span = 0;  // the block's start, from the start of the first chunk
  int device = -1;
  std::vector<ExportedChunk> chunks;
  // pool_pointer only: which of the exporter's pools (so that an importer imports each pool once) and
  // the block's export data.
  std::uint64_t pool_id = 0;
  std::array<std::uint8_t, kPoolPointerDataSize> pool_pointer_data{};
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

  // find(), and in the same step counts `importer` as a holder of the export, so that a free racing the
  // answer cannot slip between the two. The server calls it; on a failed send it calls release().
  bool find_for_import(std::uint64_t id, pid_t importer, ExportRecord* out) noexcept;
  // `importer` closed export `id`. False if it held none.
  bool release(std::uint64_t id, pid_t importer) noexcept;

  // The exporting program freed the block at `block_base`. True when a process still holds one of its
  // exports: the exports are marked retired and the caller keeps the block (neither reuses nor frees
  // it) until take_released_blocks() returns it. False otherwise; the block's exports are forgotten then
  // (a handle to freed memory no longer opens, as with the driver). One relaxed load when nothing is
  // exported.
  bool retire_block(std::uint64_t block_base) noexcept;
  // Appends to *out the bases of retired blocks no process holds any more, forgetting their exports.
  // Holders for which `is_alive(pid)` is false (the importer exited without closing) are dropped first;
  // is_alive may be null to skip that check.
  void take_released_blocks(bool (*is_alive)(pid_t), std::vector<std::uint64_t>* out) noexcept;
  // Retired blocks still held (relaxed; the caller's cheap test before take_released_blocks).
  std::size_t retired_count() const noexcept { return retired_count_.load(std::memory_order_relaxed); }

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
    std::map<pid_t, int> holders;         // importer -> opens not yet released
    bool retired = false;                 // the exporting program freed the block; held for the holders
  };
  using DedupKey = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>;  // base, size, first chunk
  using ExportIterator = std::map<std::uint64_t, Export>::iterator;

  ExportIterator erase_export(ExportIterator it) noexcept;              // mutex_ held
  bool copy_with_fds(const Export& entry, ExportRecord* out) const noexcept;  // mutex_ held; dups the fds

  mutable std::mutex mutex_;
  std::map<std::uint64_t, int> chunk_fds_;       // chunk key -> fd we own
  std::map<std::uint64_t, Export> exports_;      // id -> export
  std::map<DedupKey, std::uint64_t> export_ids_; // same block exported again -> same id; also by base
  std::uint64_t next_id_ = 1;
  std::atomic<std::size_t> export_count_{0};     // exports_.size(), for retire_block's cheap test
  std::set<std::uint64_t> retired_bases_;        // blocks freed by the program, still held
  std::atomic<std::size_t> retired_count_{0};    // retired_bases_.size()
};

}  // namespace gpushim::ipc
