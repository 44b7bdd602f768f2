// The out-of-memory path: what the router does when a backend cannot serve an allocation (get freed
// memory back, cheapest first), and the report it writes when even that fails.
#pragma once

#include <cstddef>
#include <cstdint>

#include "allocators/allocator.h"
#include "router/router_state.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

// The allocation missed: get freed memory back, in order of cost. Each step is retried once.
void* allocate_under_pressure(DeviceState& device, std::size_t block_size, StreamHandle stream) noexcept;
void report_out_of_memory(DeviceState& device, std::size_t requested) noexcept;
// Freed bytes gpushim still holds back on `device` (fence queue, thread batches, stream lists).
std::uint64_t pending_bytes(DeviceState& device) noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
