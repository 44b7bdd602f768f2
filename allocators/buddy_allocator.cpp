#include "allocators/buddy_allocator.h"

#include <algorithm>
#include <limits>

namespace gpushim {
namespace {

std::size_t round_up(std::size_t value, std::size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Smallest order k with (kBuddyMinBlock << k) >= bytes.
unsigned order_covering(std::size_t bytes) {
  unsigned order = 0;
  while ((kBuddyMinBlock << order) < bytes) ++order;
  return order;
}

}  // namespace

BuddyAllocator::BuddyAllocator(MemoryProvider& provider, std::size_t region_bytes) noexcept
    : provider_(provider),
      granularity_(std::max<std::size_t>(provider.granularity(), 1)),
      // Capped at 2^40: a larger "region" would be a reservation no device can back.
      max_order_(order_covering(std::min<std::size_t>(std::max(region_bytes, kBuddyMinBlock),
                                                      std::size_t{1} << 40))),
      free_by_order_(max_order_ + 1) {}

BuddyAllocator::~BuddyAllocator() {
  std::lock_guard<std::mutex> lock(mutex_);
  while (!regions_.empty()) release_region_locked(regions_.begin());
  for (const auto& [base, mapped] : dedicated_) {
    provider_.unmap(reinterpret_cast<void*>(base), mapped);
    provider_.release_reservation(reinterpret_cast<void*>(base), mapped);
  }
}

unsigned BuddyAllocator::order_for(std::size_t bytes) const noexcept { return order_covering(bytes); }

void* BuddyAllocator::allocate(std::size_t bytes, StreamHandle) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  void* p = nullptr;
  try {  // the host-side sets allocate; a host bad_alloc must become nullptr, not escape
    if (bytes != 0) p = allocate_locked(bytes);
  } catch (...) {
    p = nullptr;
  }
  if (p == nullptr) {
    ++stats_.failed_allocations;
    return nullptr;
  }
  ++stats_.allocations;
  stats_.bytes_in_use += bytes;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  return p;
}

void* BuddyAllocator::allocate_locked(std::size_t bytes) noexcept {
  if (bytes > block_bytes(max_order_)) return allocate_dedicated_locked(bytes);
  const unsigned order = order_for(bytes);
  void* p = take_block_locked(order);
  if (p == nullptr && add_region_locked(order)) p = take_block_locked(order);
  if (p == nullptr) return allocate_dedicated_locked(bytes);  // no room for a whole region
  stats_.internal_waste += block_bytes(order) - bytes;
  return p;
}

void* BuddyAllocator::take_block_locked(unsigned order) noexcept {
  unsigned k = order;
  while (k <= max_order_ && free_by_order_[k].empty()) ++k;
  if (k > max_order_) return nullptr;
  const std::uintptr_t address = *free_by_order_[k].begin();
  free_by_order_[k].erase(free_by_order_[k].begin());
  // Split: keep the low half, the high half becomes a free buddy one order down.
  while (k > order) {
    --k;
    free_by_order_[k].insert(address + block_bytes(k));
  }
  if (Region* region = region_of_locked(address)) ++region->live_blocks;
  return reinterpret_cast<void*>(address);
}

bool BuddyAllocator::add_region_locked(unsigned min_order) noexcept {
  // Near the memory cap a full region may not fit; a smaller power of two that still holds the
  // request might. Below one granule, halving no longer saves physical memory, so stop there.
  const unsigned granule_order = std::min(order_covering(granularity_), max_order_);
  const unsigned lowest = std::max(min_order, granule_order);
  for (unsigned k = max_order_ + 1; k-- > lowest;) {
    const std::size_t bytes = block_bytes(k);
    const std::size_t mapped = round_up(bytes, granularity_);
    void* base = provider_.reserve(mapped);
    if (base == nullptr) continue;
    if (!provider_.map(base, mapped)) {
      provider_.release_reservation(base, mapped);
      continue;
    }
    const auto address = reinterpret_cast<std::uintptr_t>(base);
    Region region;
    region.base = address;
    region.bytes = bytes;
    region.mapped_bytes = mapped;
    region.order = k;
    regions_.emplace(address, region);
    free_by_order_[k].insert(address);
    stats_.bytes_reserved += mapped;
    note_reserved_locked();
    return true;
  }
  return false;
}

void* BuddyAllocator::allocate_dedicated_locked(std::size_t bytes) noexcept {
  if (bytes > std::numeric_limits<std::size_t>::max() - granularity_) return nullptr;
  const std::size_t mapped = round_up(bytes, granularity_);
  void* base = provider_.reserve(mapped);
  if (base == nullptr) return nullptr;
  if (!provider_.map(base, mapped)) {
    provider_.release_reservation(base, mapped);
    return nullptr;
  }
  try {
    dedicated_.emplace(reinterpret_cast<std::uintptr_t>(base), mapped);
  } catch (...) {  // host out of memory: give the range back rather than lose track of it
    provider_.unmap(base, mapped);
    provider_.release_reservation(base, mapped);
    return nullptr;
  }
  stats_.bytes_reserved += mapped;
  stats_.internal_waste += mapped - bytes;
  note_reserved_locked();
  return base;
}

void BuddyAllocator::note_reserved_locked() noexcept {
  stats_.peak_bytes_reserved = std::max(stats_.peak_bytes_reserved, stats_.bytes_reserved);
}

BuddyAllocator::Region* BuddyAllocator::region_of_locked(std::uintptr_t address) noexcept {
  auto it = regions_.upper_bound(address);
  if (it == regions_.begin()) return nullptr;
  --it;
  Region& region = it->second;
  return address < region.base + region.bytes ? &region : nullptr;
}

void BuddyAllocator::deallocate(void* p, std::size_t bytes, StreamHandle) noexcept {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto address = reinterpret_cast<std::uintptr_t>(p);

  if (auto it = dedicated_.find(address); it != dedicated_.end()) {
    const std::size_t mapped = it->second;
    dedicated_.erase(it);
    // Dedicated ranges are huge or a last resort under pressure: caching them would pin memory the
    // program may need elsewhere, so they go back at once.
    provider_.unmap(p, mapped);
    provider_.release_reservation(p, mapped);
    stats_.bytes_reserved -= mapped;
    stats_.internal_waste -= mapped - bytes;
  } else {
    Region* region = region_of_locked(address);
    if (region == nullptr) return;  // not ours: the router validates pointers, so this is a bug upstream
    unsigned order = order_for(bytes);
    stats_.internal_waste -= block_bytes(order) - bytes;
    --region->live_blocks;
    // Merge upward while the buddy (the address with this order's bit flipped) is free.
    while (order < region->order) {
      const std::uintptr_t buddy = region->base + ((address - region->base) ^ block_bytes(order));
      if (free_by_order_[order].erase(buddy) == 0) break;
      address = std::min(address, buddy);
      ++order;
    }
    free_by_order_[order].insert(address);
  }
  ++stats_.deallocations;
  stats_.bytes_in_use -= bytes;
}

void BuddyAllocator::release_region_locked(std::map<std::uintptr_t, Region>::iterator it) noexcept {
  const Region& region = it->second;
  free_by_order_[region.order].erase(region.base);
  void* base = reinterpret_cast<void*>(region.base);
  provider_.unmap(base, region.mapped_bytes);
  provider_.release_reservation(base, region.mapped_bytes);
  stats_.bytes_reserved -= region.mapped_bytes;
  regions_.erase(it);
}

std::size_t BuddyAllocator::release_cached() noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  std::size_t released = 0;
  for (auto it = regions_.begin(); it != regions_.end();) {
    auto next = std::next(it);
    // No live block means the merges have rebuilt the root: the region is one free block.
    if (it->second.live_blocks == 0) {
      released += it->second.mapped_bytes;
      release_region_locked(it);
    }
    it = next;
  }
  return released;
}

AllocatorStats BuddyAllocator::stats() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  AllocatorStats s = stats_;
  s.bytes_cached = s.bytes_reserved - s.bytes_in_use - s.internal_waste;
  s.largest_free_block = 0;
  for (unsigned k = max_order_ + 1; k-- > 0;) {
    if (!free_by_order_[k].empty()) {
      s.largest_free_block = block_bytes(k);
      break;
    }
  }
  return s;
}

std::size_t BuddyAllocator::region_count() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  return regions_.size();
}

std::size_t BuddyAllocator::free_block_count() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  std::size_t count = 0;
  for (const auto& set : free_by_order_) count += set.size();
  return count;
}

bool BuddyAllocator::free_blocks_fully_merged() const noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  for (unsigned k = 0; k <= max_order_; ++k) {
    for (std::uintptr_t address : free_by_order_[k]) {
      auto it = regions_.upper_bound(address);
      if (it == regions_.begin()) return false;
      const Region& region = std::prev(it)->second;
      if (address >= region.base + region.bytes || k > region.order) return false;
      if ((address - region.base) % block_bytes(k) != 0) return false;  // misaligned for its order
      if (k == region.order) continue;
      const std::uintptr_t buddy = region.base + ((address - region.base) ^ block_bytes(k));
      if (free_by_order_[k].count(buddy) != 0) return false;  // two free buddies left unmerged
    }
  }
  return true;
}

std::unique_ptr<Allocator> make_buddy_allocator(MemoryProvider& provider, const Settings& settings) {
  const std::size_t region =
      settings.buddy_region != 0 ? static_cast<std::size_t>(settings.buddy_region) : kDefaultBuddyRegion;
  return std::make_unique<BuddyAllocator>(provider, region);
}

}  // namespace gpushim
