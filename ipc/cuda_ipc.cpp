#include "ipc/cuda_ipc.h"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <pthread.h>
#include <string>
#include <sys/random.h>
#include <time.h>
#include <tuple>
#include <unistd.h>
#include <vector>

#include "diagnostics/log.h"
#include "driver/real_driver.h"
#include "ipc/export_registry.h"
#include "ipc/export_server.h"
#include "ipc/exportable_memory.h"
#include "ipc/ipc_handle.h"

namespace gpushim::ipc {

std::atomic<bool> detail::g_ever_exported{false};

namespace {

// ---- sources of exportable memory -----------------------------------------------------------------
std::atomic<ExportableMemory*> g_sources[kMaxExportableSources];

// ---- exporter side: created on the first export, never destroyed (its thread may run until exit) ---
struct ExporterState {
  explicit ExporterState(std::uint64_t process_token)
      : token(process_token), server(registry, process_token, ExportServer::socket_name_for(::getpid())) {}
  const std::uint64_t token;
  ExportRegistry registry;
  ExportServer server;
};

std::atomic<ExporterState*> g_exporter{nullptr};
using detail::g_ever_exported;
std::mutex g_exporter_mutex;

std::uint64_t random_token() noexcept {
  std::uint64_t token = 0;
  if (::getrandom(&token, sizeof token, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof token)) {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    token = (static_cast<std::uint64_t>(now.tv_nsec) << 32) ^ static_cast<std::uint64_t>(now.tv_sec) ^
            (static_cast<std::uint64_t>(::getpid()) << 16);
  }
  return token == 0 ? 1 : token;
}

// The child of a fork is a new exporter: the parent's exports, fds and socket are not its own.
void exporter_after_fork_in_child() noexcept {
  new (&g_exporter_mutex) std::mutex();
  ExporterState* parent = g_exporter.exchange(nullptr);
  if (parent != nullptr) {
    parent->registry.clear();
    parent->server.reset_after_fork();  // leaked on purpose: nothing in it refers to the child
  }
}

ExporterState* exporter() noexcept {
  ExporterState* state = g_exporter.load(std::memory_order_acquire);
  if (state != nullptr) return state;
  std::lock_guard<std::mutex> guard(g_exporter_mutex);
  state = g_exporter.load(std::memory_order_relaxed);
  if (state != nullptr) return state;
  static std::once_flag fork_handler;
  std::call_once(fork_handler, [] { pthread_atfork(nullptr, nullptr, &exporter_after_fork_in_child); });
  state = new (std::nothrow) ExporterState(random_token());
  g_exporter.store(state, std::memory_order_release);
  return state;
}

struct PhysicalChunk {
  CUmemGenericAllocationHandle handle;
  CUdeviceptr base;
  std::size_t size;
};

bool physical_chunk_at(CUdeviceptr p, PhysicalChunk* out) noexcept {
  for (auto& slot : g_sources) {
    ExportableMemory* source = slot.load(std::memory_order_acquire);
    if (source != nullptr && source->physical_handle_for(p, &out->handle, &out->base, &out->size) &&
        out->size != 0 && p >= out->base && p - out->base < out->size) {
      return true;
    }
  }
  return false;
}

static_assert(sizeof(CUmemPoolPtrExportData) == kPoolPointerDataSize, "the wire format carries the export data");

// Registry key of a pool's fd: the pool's address with the top bit set, apart from the physical chunks'
// keys (allocation handles).
constexpr std::uint64_t kPoolKeyTag = 1ull << 63;

// The driver memory pool `p` was allocated from (the mempool backend's blocks), or null.
CUmemoryPool pool_of(CUdeviceptr p) noexcept {
  const RealDriver& driver = real_driver();
  CUmemoryPool pool = nullptr;
  if (driver.cuPointerGetAttribute == nullptr ||
      driver.cuPointerGetAttribute(&pool, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, p) != CUDA_SUCCESS) {
    return nullptr;
  }
  return pool;
}

void log_export_failure(const char* step, CUresult rc, const char* hint) noexcept {
  static bool reported = false;
  log_once(&reported, LogLevel::warn, "cuIpcGetMemHandle: cannot export gpushim memory (%s: %d); %s", step,
           static_cast<int>(rc), hint);
}

// ---- importer side ----------------------------------------------------------------------------------
using ExportKey = std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>;  // exporter pid, token, export id

struct Import {
  ExportKey key;
  ExportKind kind = ExportKind::mapped_chunks;
  // mapped_chunks: our reservation and what is mapped in it.
  CUdeviceptr reservation = 0;
  std::size_t span = 0;
  std::vector<std::pair<std::size_t, std::size_t>> mappings;  // offset in span, size
  // pool_pointer: the pointer cuMemPoolImportPointer returned.
  CUdeviceptr pool_pointer = 0;
  int opens = 0;
};

std::mutex g_imports_mutex;
std::map<CUdeviceptr, Import> g_imports;  // address returned to the program -> import
// Exporters' pools, imported once each (exporter pid, token, the exporter's pool id) and kept: an
// imported pool holds no memory of its own, only the blocks imported from it do.
std::map<ExportKey, CUmemoryPool> g_imported_pools;

void unmap_import(const Import& import) noexcept {
  const RealDriver& driver = real_driver();
  if (import.kind == ExportKind::pool_pointer) {
    // The driver's rule for pool IPC: the importer frees before the exporter does (the exporter holds
    // the block until our release message, sent after this).
    driver.cuMemFree(import.pool_pointer);
    return;
  }
  for (const auto& [offset, size] : import.mappings) driver.cuMemUnmap(import.reservation + offset, size);
  driver.cuMemAddressFree(import.reservation, import.span);
}

std::string exporter_socket(const ExportKey& key) { return ExportServer::socket_name_for(static_cast<pid_t>(std::get<0>(key))); }

// Tells the exporter we no longer hold its export (best effort: an exporter that exited needs nothing).
void send_release(const ExportKey& key) noexcept {
  try {
    const FetchStatus status = release_export(exporter_socket(key), std::get<1>(key), std::get<2>(key));
    if (status != FetchStatus::ok && status != FetchStatus::no_exporter) {
      log(LogLevel::info, "cuIpcCloseMemHandle: telling process %u that export %llu is closed: %s", std::get<0>(key),
          static_cast<unsigned long long>(std::get<2>(key)), fetch_status_name(status));
    }
  } catch (...) {
  }
}

void close_fds(ExportRecord* record) noexcept {
  for (ExportedChunk& chunk : record->chunks) {
    if (chunk.fd >= 0) ::close(chunk.fd);
    chunk.fd = -1;
  }
}

// Maps every chunk of `record` (fds consumed) into a fresh reservation.
CUresult map_record(ExportRecord* record, Import* import) noexcept {
  const RealDriver& driver = real_driver();
  CUdevice device = 0;
  CUresult rc = driver.cuCtxGetDevice(&device);
  if (rc != CUDA_SUCCESS) return rc;

  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  std::size_t granularity = 0;
  rc = driver.cuMemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  if (rc != CUDA_SUCCESS) return rc;

  // The chunks must tile [0, span) in order, each granularity-aligned, as the exporter mapped them.
  std::size_t span = 0;
  for (const ExportedChunk& chunk : record->chunks) {
    if (chunk.offset_in_span != span || chunk.size == 0 || granularity == 0 || chunk.size % granularity != 0) {
      return CUDA_ERROR_INVALID_VALUE;
    }
    span += chunk.size;
  }
  if (record->offset_in_span + record->block_size > span) return CUDA_ERROR_INVALID_VALUE;

  CUdeviceptr reservation = 0;
  rc = driver.cuMemAddressReserve(&reservation, span, granularity, 0, 0);
  if (rc != CUDA_SUCCESS) return rc;
  import->reservation = reservation;
  import->span = span;

  for (ExportedChunk& chunk : record->chunks) {
    CUmemGenericAllocationHandle handle = 0;
    rc = driver.cuMemImportFromShareableHandle(&handle, reinterpret_cast<void*>(static_cast<std::uintptr_t>(chunk.fd)),
                                               CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    ::close(chunk.fd);  // the imported handle holds its own reference
    chunk.fd = -1;
    if (rc == CUDA_SUCCESS) {
      rc = driver.cuMemMap(reservation + chunk.offset_in_span, chunk.size, 0, handle, 0);
      // The mapping keeps the memory alive; the handle itself is no longer needed.
      driver.cuMemRelease(handle);
    }
    if (rc != CUDA_SUCCESS) break;
    try {
      import->mappings.emplace_back(chunk.offset_in_span, chunk.size);
    } catch (...) {
      driver.cuMemUnmap(reservation + chunk.offset_in_span, chunk.size);
      rc = CUDA_ERROR_OUT_OF_MEMORY;
      break;
    }
  }
  if (rc == CUDA_SUCCESS) {
    CUmemAccessDesc access{};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    rc = driver.cuMemSetAccess(reservation, span, &access, 1);
  }
  if (rc != CUDA_SUCCESS) {
    close_fds(record);
    unmap_import(*import);
  }
  return rc;
}

// Imports the pool block of `record` (its one fd consumed): the exporter's pool once, then the pointer.
CUresult import_pool_pointer(ExportRecord* record, const ExportKey& export_key, Import* import) noexcept {
  const RealDriver& driver = real_driver();
  const int fd = record->chunks.front().fd;
  record->chunks.front().fd = -1;
  if (driver.cuMemPoolImportFromShareableHandle == nullptr || driver.cuMemPoolImportPointer == nullptr) {
    ::close(fd);
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  const ExportKey pool_key{std::get<0>(export_key), std::get<1>(export_key), record->pool_id};
  CUmemoryPool pool = nullptr;
  auto known = g_imported_pools.find(pool_key);
  if (known != g_imported_pools.end()) {
    pool = known->second;
    ::close(fd);
  } else {
    CUresult rc = driver.cuMemPoolImportFromShareableHandle(
        &pool, reinterpret_cast<void*>(static_cast<std::uintptr_t>(fd)), CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    ::close(fd);  // the imported pool holds its own reference
    if (rc != CUDA_SUCCESS) return rc;
    // An imported pool grants no access by itself (the CUDA IPC samples set it): read-write for the
    // device this process imports on.
    CUdevice device = 0;
    rc = driver.cuCtxGetDevice(&device);
    if (rc != CUDA_SUCCESS) return rc;
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = device;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    rc = driver.cuMemPoolSetAccess(pool, &access, 1);
    if (rc != CUDA_SUCCESS) return rc;
    try {
      g_imported_pools.emplace(pool_key, pool);
    } catch (...) {
      // Not cached: the next import of this pool imports it again, which works.
    }
  }
  CUmemPoolPtrExportData data;
  std::memcpy(&data, record->pool_pointer_data.data(), sizeof data);
  CUdeviceptr pointer = 0;
  const CUresult rc = driver.cuMemPoolImportPointer(&pointer, pool, &data);
  if (rc != CUDA_SUCCESS) return rc;
  import->kind = ExportKind::pool_pointer;
  import->pool_pointer = pointer;
  return CUDA_SUCCESS;
}

bool process_is_alive(pid_t pid) noexcept { return ::kill(pid, 0) == 0 || errno == EPERM; }

}  // namespace

bool register_exportable_memory(ExportableMemory* source) noexcept {
  if (source == nullptr) return false;
  for (auto& slot : g_sources) {
    ExportableMemory* empty = nullptr;
    if (slot.compare_exchange_strong(empty, source, std::memory_order_acq_rel)) return true;
  }
  static bool reported = false;
  log_once(&reported, LogLevel::warn, "internal: more than %d exportable memory sources; IPC skips the rest",
           kMaxExportableSources);
  return false;
}

void unregister_exportable_memory(ExportableMemory* source) noexcept {
  for (auto& slot : g_sources) {
    ExportableMemory* expected = source;
    slot.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel);
  }
}

void on_physical_memory_released(CUmemGenericAllocationHandle handle) noexcept {
  if (!g_ever_exported.load(std::memory_order_relaxed)) return;
  ExporterState* state = g_exporter.load(std::memory_order_acquire);
  if (state != nullptr) state->registry.forget_chunk(static_cast<std::uint64_t>(handle));
}

namespace {

// The VMM chunks behind `block` (which starts in provider memory), in address order: their keys
// (allocation handles) get an fd each.
CUresult describe_mapped_block(const BlockToExport& block, ExporterState* state, ExportRecord* record,
                               std::vector<std::uint64_t>* keys) noexcept {
  std::vector<PhysicalChunk> chunks;
  try {
    const CUdeviceptr end = block.base + (block.size == 0 ? 1 : block.size);
    for (CUdeviceptr at = block.base; at < end;) {
      PhysicalChunk chunk{};
      // A block only partly backed by a provider, or by chunks with gaps: cannot happen.
      if (!physical_chunk_at(at, &chunk)) return CUDA_ERROR_INVALID_VALUE;
      if (!chunks.empty() && chunk.base != chunks.back().base + chunks.back().size) return CUDA_ERROR_INVALID_VALUE;
      chunks.push_back(chunk);
      at = chunk.base + chunk.size;
    }
  } catch (...) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  if (chunks.empty()) return CUDA_ERROR_INVALID_VALUE;
  const RealDriver& driver = real_driver();
  try {
    for (const PhysicalChunk& chunk : chunks) {
      const std::uint64_t key = static_cast<std::uint64_t>(chunk.handle);
      if (state->registry.chunk_fd(key) < 0) {
        int fd = -1;
        CUresult rc = driver.cuMemExportToShareableHandle(&fd, chunk.handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        if (rc != CUDA_SUCCESS) {
          log_export_failure("cuMemExportToShareableHandle", rc,
                             "the provider must create it with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR");
          return rc;
        }
        state->registry.add_chunk(key, fd);  // another thread may have won the race: then its fd is kept
      }
      keys->push_back(key);
      record->chunks.push_back(ExportedChunk{chunk.base - chunks.front().base, chunk.size, -1});
    }
  } catch (...) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  record->kind = ExportKind::mapped_chunks;
  record->offset_in_span = block.base - chunks.front().base;
  return CUDA_SUCCESS;
}

// A block of a driver memory pool (the mempool backend): the pool's fd (once per pool) and the block's
// export data.
CUresult describe_pool_block(const BlockToExport& block, CUmemoryPool pool, ExporterState* state,
                             ExportRecord* record, std::vector<std::uint64_t>* keys) noexcept {
  const RealDriver& driver = real_driver();
  if (driver.cuMemPoolExportToShareableHandle == nullptr || driver.cuMemPoolExportPointer == nullptr)
    return CUDA_ERROR_NOT_SUPPORTED;
  const std::uint64_t key = kPoolKeyTag | static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(pool));
  if (state->registry.chunk_fd(key) < 0) {
    int fd = -1;
    CUresult rc = driver.cuMemPoolExportToShareableHandle(&fd, pool, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    if (rc != CUDA_SUCCESS) {
      log_export_failure("cuMemPoolExportToShareableHandle", rc,
                         "the mempool backend's pool was created without shareable handles on this platform");
      return rc;
    }
    state->registry.add_chunk(key, fd);  // pools live until exit: the fd is never forgotten
  }
  CUmemPoolPtrExportData data;
  CUresult rc = driver.cuMemPoolExportPointer(&data, block.base);
  if (rc != CUDA_SUCCESS) {
    log_export_failure("cuMemPoolExportPointer", rc, "the pool refused to export the block");
    return rc;
  }
  try {
    keys->push_back(key);
    record->chunks.push_back(ExportedChunk{0, block.size, -1});
  } catch (...) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  record->kind = ExportKind::pool_pointer;
  record->offset_in_span = 0;
  record->pool_id = key;
  std::memcpy(record->pool_pointer_data.data(), &data, sizeof data);
  return CUDA_SUCCESS;
}

}  // namespace

CUresult export_block(CUipcMemHandle* out, const BlockToExport& block, bool* handled) noexcept {
  *handled = false;
  if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;

  // Only provider memory or pool memory is gpushim's to export; anything else (passthrough's cuMemAlloc
  // blocks) is the driver's business. The exporter state (and its thread) is made only once we know.
  PhysicalChunk first{};
  const bool mapped = physical_chunk_at(block.base, &first);
  CUmemoryPool pool = mapped ? nullptr : pool_of(block.base);
  if (!mapped && pool == nullptr) return CUDA_SUCCESS;
  *handled = true;

  ExporterState* state = exporter();
  if (state == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
  g_ever_exported.store(true, std::memory_order_relaxed);
  ExportRecord record;
  std::vector<std::uint64_t> keys;
  const CUresult rc = mapped ? describe_mapped_block(block, state, &record, &keys)
                             : describe_pool_block(block, pool, state, &record, &keys);
  if (rc != CUDA_SUCCESS) return rc;
  record.block_size = block.size;
  record.device = block.device;
  const std::uint64_t id = state->registry.add_export(block.base, keys, record);
  if (id == 0) return CUDA_ERROR_OUT_OF_MEMORY;

  if (!state->server.start()) {
    static bool reported = false;
    log_once(&reported, LogLevel::warn, "cuIpcGetMemHandle: cannot start the IPC socket server; export refused");
    return CUDA_ERROR_OPERATING_SYSTEM;
  }
  static bool explained = false;
  log_once(&explained, LogLevel::warn,
           "cuIpcGetMemHandle on gpushim memory: the handle opens only in processes that also run under gpushim "
           "(elsewhere cuIpcOpenMemHandle returns the driver's error)");

  HandleFields fields;
  fields.exporter_pid = static_cast<std::uint32_t>(::getpid());
  fields.exporter_token = state->token;
  fields.export_id = id;
  fields.offset_in_span = record.offset_in_span;
  fields.block_size = block.size;
  fields.device = block.device;
  *out = encode_handle(fields);
  return CUDA_SUCCESS;
}

bool hold_freed_block(CUdeviceptr base) noexcept {
  if (!g_ever_exported.load(std::memory_order_relaxed)) return false;
  ExporterState* state = g_exporter.load(std::memory_order_acquire);
  return state != nullptr && state->registry.retire_block(static_cast<std::uint64_t>(base));
}

bool take_released_blocks(std::vector<CUdeviceptr>* out) noexcept {
  if (!g_ever_exported.load(std::memory_order_relaxed)) return false;
  ExporterState* state = g_exporter.load(std::memory_order_acquire);
  if (state == nullptr || state->registry.retired_count() == 0) return false;
  // Whether a holder exited without closing costs a kill(pid, 0) each: asked at most every 100 ms.
  static std::atomic<std::int64_t> last_liveness_check_ns{0};
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const std::int64_t now_ns = static_cast<std::int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
  std::int64_t last = last_liveness_check_ns.load(std::memory_order_relaxed);
  const bool check_liveness = now_ns - last >= 100 * 1000 * 1000 &&
                              last_liveness_check_ns.compare_exchange_strong(last, now_ns, std::memory_order_relaxed);
  std::vector<std::uint64_t> bases;
  state->registry.take_released_blocks(check_liveness ? &process_is_alive : nullptr, &bases);
  try {
    for (std::uint64_t base : bases) out->push_back(static_cast<CUdeviceptr>(base));
  } catch (...) {
    // The blocks stay held for good: safe, only memory lost.
  }
  return !bases.empty();
}

bool is_gpushim_handle(const CUipcMemHandle& handle) noexcept { return decode_handle(handle, nullptr); }

CUresult open_handle(CUdeviceptr* out, const CUipcMemHandle& handle, unsigned int /*flags*/) noexcept {
  HandleFields fields;
  if (out == nullptr || !decode_handle(handle, &fields)) return CUDA_ERROR_INVALID_VALUE;
  const ExportKey key{fields.exporter_pid, fields.exporter_token, fields.export_id};

  std::lock_guard<std::mutex> guard(g_imports_mutex);  // slow path; also keeps two opens from racing
  for (auto& [address, import] : g_imports) {
    if (import.key == key) {
      ++import.opens;
      *out = address;
      return CUDA_SUCCESS;
    }
  }

  ExportRecord record;
  const FetchStatus status =
      fetch_export(ExportServer::socket_name_for(static_cast<pid_t>(fields.exporter_pid)), fields.exporter_token,
                   fields.export_id, &record);
  if (status != FetchStatus::ok) {
    log(LogLevel::info, "cuIpcOpenMemHandle: export %llu of process %u: %s",
        static_cast<unsigned long long>(fields.export_id), fields.exporter_pid, fetch_status_name(status));
    return CUDA_ERROR_INVALID_VALUE;  // what the driver returns for a handle it cannot open
  }
  // From here on this process holds the export: every way out that maps nothing tells the exporter.
  if (record.offset_in_span != fields.offset_in_span || record.block_size != fields.block_size) {
    close_fds(&record);
    send_release(key);
    return CUDA_ERROR_INVALID_VALUE;
  }
  Import import;
  import.key = key;
  CUresult rc = record.kind == ExportKind::pool_pointer ? import_pool_pointer(&record, key, &import)
                                                        : map_record(&record, &import);
  if (rc != CUDA_SUCCESS) {
    send_release(key);
    return rc;
  }
  import.opens = 1;
  const CUdeviceptr address =
      import.kind == ExportKind::pool_pointer ? import.pool_pointer : import.reservation + record.offset_in_span;
  try {
    g_imports.emplace(address, std::move(import));
  } catch (...) {
    unmap_import(import);
    send_release(key);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  *out = address;
  return CUDA_SUCCESS;
}

CUresult close_handle(CUdeviceptr p, bool* handled) noexcept {
  Import closing;
  {
    std::lock_guard<std::mutex> guard(g_imports_mutex);
    auto it = g_imports.find(p);
    *handled = it != g_imports.end();
    if (!*handled) return CUDA_SUCCESS;
    if (--it->second.opens > 0) return CUDA_SUCCESS;
    closing = std::move(it->second);
    g_imports.erase(it);
  }
  // Like the driver's cuIpcCloseMemHandle, this does not wait for work still using the memory: the
  // program must have synchronized. Unmapping drops our reference; then the exporter may free the block.
  unmap_import(closing);
  send_release(closing.key);
  return CUDA_SUCCESS;
}

}  // namespace gpushim::ipc
