// How much host memory this process may pin: what the share form of GPUSHIM_SPILL_LIMIT ("25%") is a
// share of (docs/host-spill.md).
#pragma once

#include <cstddef>

namespace gpushim {

// The physical memory (sysconf), or the cgroup's memory limit where it is smaller: a container is
// killed past its limit whatever the host has. `cgroup_limit_file` counts when it holds a number
// ("max", or no such file: no limit). 0 when neither can be read.
std::size_t host_memory_for_spill(const char* cgroup_limit_file = "/sys/fs/cgroup/memory.max") noexcept;

}  // namespace gpushim
