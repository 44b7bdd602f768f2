#include "providers/host_memory_capacity.h"

#include <unistd.h>

#include <cstdio>

namespace gpushim {

std::size_t host_memory_for_spill(const char* cgroup_limit_file) noexcept {
  std::size_t physical = 0;
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) physical = static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size);
  std::size_t limit = 0;
  if (cgroup_limit_file) {
    if (std::FILE* f = std::fopen(cgroup_limit_file, "re")) {
      unsigned long long value = 0;
      if (std::fscanf(f, "%llu", &value) == 1) limit = static_cast<std::size_t>(value);  // "max": no number
      std::fclose(f);
    }
  }
  if (limit == 0) return physical;
  if (physical == 0) return limit;
  return limit < physical ? limit : physical;
}

}  // namespace gpushim
