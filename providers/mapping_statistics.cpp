#include "providers/mapping_statistics.h"

#include "diagnostics/monotonic_clock.h"

namespace gpushim {

bool MappingStatisticsProvider::map(void* addr, std::size_t bytes) noexcept {
  const std::uint64_t began = monotonic_ns();
  const bool mapped = inner_.map(addr, bytes);
  const std::uint64_t took = monotonic_ns() - began;
  if (!mapped) {
    refused_maps_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  ++t_maps_by_this_thread;
  maps_.fetch_add(1, std::memory_order_relaxed);
  map_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  map_ns_.fetch_add(took, std::memory_order_relaxed);
  return true;
}

void MappingStatisticsProvider::unmap(void* addr, std::size_t bytes) noexcept {
  const std::uint64_t began = monotonic_ns();
  inner_.unmap(addr, bytes);
  const std::uint64_t took = monotonic_ns() - began;
  unmaps_.fetch_add(1, std::memory_order_relaxed);
  unmap_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  unmap_ns_.fetch_add(took, std::memory_order_relaxed);
}

MappingTotals MappingStatisticsProvider::totals() const noexcept {
  MappingTotals t;
  t.maps = maps_.load(std::memory_order_relaxed);
  t.map_bytes = map_bytes_.load(std::memory_order_relaxed);
  t.map_ns = map_ns_.load(std::memory_order_relaxed);
  t.refused_maps = refused_maps_.load(std::memory_order_relaxed);
  t.unmaps = unmaps_.load(std::memory_order_relaxed);
  t.unmap_bytes = unmap_bytes_.load(std::memory_order_relaxed);
  t.unmap_ns = unmap_ns_.load(std::memory_order_relaxed);
  return t;
}

}  // namespace gpushim
