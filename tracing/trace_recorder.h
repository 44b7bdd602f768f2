// What the rest of gpushim calls to record a trace event. Cheap when tracing is off: one load of a
// global flag. The router records block events; providers record map/unmap so that a trace knows
// reserved memory over time. The file format is in docs/trace-format.md.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "tracing/backend_id.h"

namespace gpushim::tracing {

enum class EventKind : std::uint8_t {
  alloc = 1,          // cuMemAlloc / cuMemAllocPitch served
  free = 2,           // cuMemFree of a gpushim block
  alloc_async = 3,    // cuMemAllocAsync served (stream set)
  free_async = 4,     // cuMemFreeAsync of a gpushim block
  alloc_failed = 5,   // an allocation that returned an error (size set, address 0)
  cache_release = 6,  // cached memory given back (size = bytes released)
  out_of_memory = 7,  // CUDA_ERROR_OUT_OF_MEMORY returned to the program after the retry
  map = 8,            // physical memory mapped by a provider (address, size)
  unmap = 9,          // physical memory given back by a provider (address, size)
  spill_map = 10,     // host memory mapped for the device's spilled blocks (GPUSHIM_SPILL=host)
  spill_unmap = 11,   // host memory of spilled blocks given back
};

namespace detail {
extern std::atomic<bool> g_enabled;
void record_slow(EventKind kind, int device, std::uint64_t stream, std::uint64_t address,
                 std::uint64_t size, BackendId backend) noexcept;
}  // namespace detail

// always_inline: the call site is the caller's frame in a recorded stack, never record()'s own.
__attribute__((always_inline)) inline bool enabled() noexcept { return detail::g_enabled.load(std::memory_order_relaxed); }

__attribute__((always_inline)) inline void record(EventKind kind, int device, std::uint64_t stream, std::uint64_t address,
                   std::uint64_t size, BackendId backend) noexcept {
  if (enabled()) detail::record_slow(kind, device, stream, address, size, backend);
}

// Called once by the router at load (reads GPUSHIM_TRACE*), and at exit to flush.
void start_from_settings() noexcept;
void flush() noexcept;

// Starts recording into `path` (%p and %r expanded as for GPUSHIM_TRACE) with up to `stack_depth`
// return addresses per allocation. Replaces a recording in progress. False when the file cannot be
// created. For tests, benchmarks and start_from_settings().
bool start(const char* path, int stack_depth) noexcept;
// Flushes every thread's buffer, marks the trace as cleanly closed and closes the file.
void stop() noexcept;

// "%p" -> process id, "%r" -> rank (RANK, LOCAL_RANK, OMPI_COMM_WORLD_RANK, SLURM_PROCID; "0" when
// none is set), "%%" -> "%". False when the result does not fit `out_bytes`.
bool expand_trace_path(const char* pattern, char* out, std::size_t out_bytes) noexcept;

// For other writers of the trace format (the out-of-memory dump, tracing/oom_dump_writer.h). All
// return false on a failed write; none allocates.
// The 64-byte file header; `flags` are format::kFlag* bits.
bool write_trace_header(int fd, std::uint64_t start_monotonic_ns, int stack_depth, std::uint32_t flags) noexcept;
// Fills the ChunkHeader at the front of `chunk` and writes it with the `payload_bytes` of records after it.
bool write_trace_chunk(int fd, unsigned char* chunk, std::size_t payload_bytes, std::uint32_t thread_id,
                       std::uint32_t records) noexcept;
// The module map of the process (every loaded ELF object), for resolving recorded frames later.
void write_trace_module_map(int fd) noexcept;

}  // namespace gpushim::tracing
