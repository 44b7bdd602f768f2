// The out-of-memory path: what the router does when a backend cannot serve an allocation (get freed
// memory back, cheapest first), and the report it writes when even that fails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "allocators/allocator.h"
#include "router/live_block_table.h"
#include "router/router_state.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

// The allocation while freed blocks wait for a fence (device.fences.holds_blocks()): first without
// growing past the backend's peak (allocators/growth_policy.h); when only growth would serve it and the
// fenced blocks with the free memory could, waits up to kNewPeakWait for their fences, then grows.
// Returns nullptr only when growing fails too (then allocate_under_pressure).
void* allocate_without_new_peak(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept;
// The allocation missed: get freed memory back, in order of cost. Each step is retried once.
void* allocate_under_pressure(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept;
// An allocation failed (for real, or `injected` by GPUSHIM_FAIL): the report on stderr, once per burst
// of failures, and the GPUSHIM_OOM_DUMP file, once per process (the first failure's state is the one
// that explains it).
void report_out_of_memory(DeviceState& device, std::size_t requested, StreamHandle stream, bool injected) noexcept;

// GPUSHIM_OOM_DUMP. Read once at start; while armed, serve() stamps each live block with its time and,
// with GPUSHIM_OOM_DUMP_STACK, its call stack (stamp_for_dump), so the dump can give ages and sites.
extern bool g_dump_armed;
void arm_oom_dump(const std::string& path, int stack_depth) noexcept;
void stamp_for_dump(LiveBlock* block) noexcept;
__attribute__((always_inline)) inline bool oom_dump_armed() noexcept { return __builtin_expect(g_dump_armed, 0); }
// Freed bytes gpushim still holds back on `device` (fence queue, thread batches, stream lists).
std::uint64_t pending_bytes(DeviceState& device) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
