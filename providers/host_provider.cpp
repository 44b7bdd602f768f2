#include "providers/host_provider.h"

#include <sys/mman.h>
#include <unistd.h>

namespace gpushim {
namespace {

std::size_t round_granularity(std::size_t requested) {
  std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  std::size_t g = page;
  while (g < requested) g <<= 1;
  return g;
}

}  // namespace

HostProvider::HostProvider(std::size_t granularity, std::size_t physical_cap) noexcept
    : granularity_(round_granularity(granularity)), physical_cap_(physical_cap) {}

HostProvider::~HostProvider() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [base, bytes] : reservations_) munmap(reinterpret_cast<void*>(base), bytes);
}

void* HostProvider::reserve(std::size_t bytes) noexcept {
  if (bytes == 0 || !aligned(bytes)) {
    misuse_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  // mmap only promises page alignment; cuMemAddressReserve aligns to the granularity. Over-reserve by
  // one granule and trim, so the arena sees the same alignment it gets on the GPU.
  // PROT_NONE + MAP_NORESERVE: address space only, no commit charge, like cuMemAddressReserve.
  std::size_t padded = bytes + granularity_;
  if (padded < bytes) return nullptr;
  void* raw = mmap(nullptr, padded, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) {
    host_failures_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  auto start = reinterpret_cast<std::uintptr_t>(raw);
  std::uintptr_t base = (start + granularity_ - 1) & ~(granularity_ - 1);
  if (base > start) munmap(raw, base - start);
  std::uintptr_t tail = base + bytes;
  if (start + padded > tail) munmap(reinterpret_cast<void*>(tail), start + padded - tail);
  try {
    std::lock_guard<std::mutex> lock(mutex_);
    reservations_.emplace(base, bytes);
  } catch (...) {
    host_failures_.fetch_add(1, std::memory_order_relaxed);
    munmap(reinterpret_cast<void*>(base), bytes);
    return nullptr;
  }
  return reinterpret_cast<void*>(base);
}

void HostProvider::release_reservation(void* base, std::size_t bytes) noexcept {
  auto b = reinterpret_cast<std::uintptr_t>(base);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = reservations_.find(b);
  if (it == reservations_.end() || it->second != bytes || overlaps_mapping(b, bytes)) {
    // cuMemAddressFree fails on a range that is not a whole reservation or is still mapped.
    misuse_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  reservations_.erase(it);
  munmap(base, bytes);
}

bool HostProvider::inside_reservation(std::uintptr_t addr, std::size_t bytes) const {
  auto it = reservations_.upper_bound(addr);
  if (it == reservations_.begin()) return false;
  --it;
  return addr >= it->first && addr + bytes <= it->first + it->second;
}

bool HostProvider::overlaps_mapping(std::uintptr_t addr, std::size_t bytes) const {
  auto it = mappings_.lower_bound(addr);
  if (it != mappings_.end() && it->first < addr + bytes) return true;
  if (it == mappings_.begin()) return false;
  --it;
  return it->first + it->second > addr;
}

bool HostProvider::map(void* addr, std::size_t bytes) noexcept {
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  map_calls_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mutex_);
  if (bytes == 0 || !aligned(a) || !aligned(bytes) || !inside_reservation(a, bytes) ||
      overlaps_mapping(a, bytes)) {
    misuse_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  std::size_t mapped = bytes_mapped_.load(std::memory_order_relaxed);
  if (physical_cap_ != kUnlimited && (bytes > physical_cap_ || mapped > physical_cap_ - bytes))
    return false;  // out of "physical" memory
  try {
    mappings_.emplace(a, bytes);
  } catch (...) {
    host_failures_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (mprotect(addr, bytes, PROT_READ | PROT_WRITE) != 0) {
    host_failures_.fetch_add(1, std::memory_order_relaxed);
    mappings_.erase(a);
    return false;
  }
  bytes_mapped_.fetch_add(bytes, std::memory_order_relaxed);
  return true;
}

void HostProvider::unmap(void* addr, std::size_t bytes) noexcept {
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  unmap_calls_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = mappings_.find(a);
  if (it == mappings_.end() || it->second != bytes) {
    misuse_.fetch_add(1, std::memory_order_relaxed);  // cuMemUnmap of a partial or unknown mapping
    return;
  }
  mappings_.erase(it);
  // DONTNEED drops the pages (the physical memory really goes back); PROT_NONE makes a later touch fault,
  // as a touch of unmapped device memory would.
  madvise(addr, bytes, MADV_DONTNEED);
  mprotect(addr, bytes, PROT_NONE);
  bytes_mapped_.fetch_sub(bytes, std::memory_order_relaxed);
}

}  // namespace gpushim
