#include "ipc/cuda_ipc.h"

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <new>
#include <pthread.h>
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
std::atomic<bool> g_ever_exported{false};
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

// ---- importer side ----------------------------------------------------------------------------------
struct Import {
  std::tuple<std::uint32_t, std::uint64_t, std::uint64_t> key;  // pid, token, export id
  CUdeviceptr reservation = 0;
  std::size_t span = 0;
  std::vector<std::pair<std::size_t, std::size_t>> mappings;  // offset in span, size
  int opens = 0;
};

std::mutex g_imports_mutex;
std::map<CUdeviceptr, Import> g_imports;  // address returned to the program -> import

void unmap_import(const Import& import) noexcept {
  const RealDriver& driver = real_driver();
  for (const auto& [offset, size] : import.mappings) driver.cuMemUnmap(import.reservation + offset, size);
  driver.cuMemAddressFree(import.reservation, import.span);
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

CUresult export_block(CUipcMemHandle* out, const BlockToExport& block, bool* handled) noexcept {
  *handled = false;
  if (out == nullptr) return CUDA_ERROR_INVALID_VALUE;

  std::vector<PhysicalChunk> chunks;
  try {
    const CUdeviceptr end = block.base + (block.size == 0 ? 1 : block.size);
    for (CUdeviceptr at = block.base; at < end;) {
      PhysicalChunk chunk{};
      if (!physical_chunk_at(at, &chunk)) {
        if (chunks.empty()) return CUDA_SUCCESS;  // not exportable memory: the driver's business
        *handled = true;
        return CUDA_ERROR_INVALID_VALUE;  // a block only partly backed by a provider: cannot happen
      }
      if (!chunks.empty() && chunk.base != chunks.back().base + chunks.back().size) {
        *handled = true;
        return CUDA_ERROR_INVALID_VALUE;
      }
      chunks.push_back(chunk);
      at = chunk.base + chunk.size;
    }
  } catch (...) {
    *handled = true;
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  *handled = true;

  ExporterState* state = exporter();
  if (state == nullptr) return CUDA_ERROR_OUT_OF_MEMORY;
  g_ever_exported.store(true, std::memory_order_relaxed);

  const RealDriver& driver = real_driver();
  ExportRecord record;
  std::vector<std::uint64_t> keys;
  try {
    for (const PhysicalChunk& chunk : chunks) {
      const std::uint64_t key = static_cast<std::uint64_t>(chunk.handle);
      if (state->registry.chunk_fd(key) < 0) {
        int fd = -1;
        CUresult rc = driver.cuMemExportToShareableHandle(&fd, chunk.handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        if (rc != CUDA_SUCCESS) {
          static bool reported = false;
          log_once(&reported, LogLevel::warn,
                   "cuIpcGetMemHandle: cannot export gpushim memory (cuMemExportToShareableHandle: %d); the "
                   "provider must create it with CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR",
                   static_cast<int>(rc));
          return rc;
        }
        state->registry.add_chunk(key, fd);  // another thread may have won the race: then its fd is kept
      }
      keys.push_back(key);
      record.chunks.push_back(ExportedChunk{chunk.base - chunks.front().base, chunk.size, -1});
    }
  } catch (...) {
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  record.block_size = block.size;
  record.offset_in_span = block.base - chunks.front().base;
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

bool is_gpushim_handle(const CUipcMemHandle& handle) noexcept { return decode_handle(handle, nullptr); }

CUresult open_handle(CUdeviceptr* out, const CUipcMemHandle& handle, unsigned int /*flags*/) noexcept {
  HandleFields fields;
  if (out == nullptr || !decode_handle(handle, &fields)) return CUDA_ERROR_INVALID_VALUE;
  const auto key = std::make_tuple(fields.exporter_pid, fields.exporter_token, fields.export_id);

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
  if (record.offset_in_span != fields.offset_in_span || record.block_size != fields.block_size) {
    close_fds(&record);
    return CUDA_ERROR_INVALID_VALUE;
  }
  Import import;
  import.key = key;
  CUresult rc = map_record(&record, &import);
  if (rc != CUDA_SUCCESS) return rc;
  import.opens = 1;
  const CUdeviceptr address = import.reservation + record.offset_in_span;
  try {
    g_imports.emplace(address, std::move(import));
  } catch (...) {
    unmap_import(import);
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
  // program must have synchronized. Unmapping drops our reference; the exporter's memory is untouched.
  unmap_import(closing);
  return CUDA_SUCCESS;
}

}  // namespace gpushim::ipc
