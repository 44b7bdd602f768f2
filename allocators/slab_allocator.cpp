#include "allocators/slab_allocator.h"

#include <pthread.h>

#include <algorithm>
#include <limits>
#include <new>

#include "allocators/growth_policy.h"
#include "allocators/live_allocator_registry.h"
#include "allocators/owner_biased_lock.h"
#include "allocators/raise_peak.h"

namespace gpushim {
namespace {

// A magazine holds at most this many bytes of one class, so a thread pins little memory: 256 KiB is
// 64 blocks of 4 KiB or 4 of 64 KiB. Capacity is capped at 64 blocks: refilling 32 at a time already
// takes the depot lock for ~3% of small operations.
constexpr std::size_t kMagazineBytes = 256 << 10;
constexpr std::uint32_t kMagazineMaxBlocks = 64;
// Below this a magazine would refill on every other call; such classes (> 64 KiB) use the depot directly.
constexpr std::uint32_t kMinMagazineBlocks = 4;
// Empty slabs a class keeps mapped after frees, so a program that oscillates around a slab boundary
// does not map and unmap a granule (~50 us on the H100) on every swing. release_cached() drops them too.
constexpr std::size_t kIdleEmptySlabsPerClass = 1;
// A slab is one 2 MiB chunk (rounded up to the granularity), not a multiple picked per class to trim
// the tail: 4x slabs cut the tail of e.g. the 768 KiB class from 25% to 0, but every class with one live
// block then pins up to 8 MiB, and the shared conformance suite (96 MiB cap, sizes to 2 MiB) ran out of
// memory with 84 MiB cached in half-used slabs. Big classes lose at most their tail instead.

std::size_t round_up(std::size_t value, std::size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Counters written by a single thread skip the locked read-modify-write.
template <typename T>
void bump_owned(std::atomic<T>& counter, T delta) {
  counter.store(counter.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}
template <typename T>
void bump_shared(std::atomic<T>& counter, T delta) {
  counter.fetch_add(delta, std::memory_order_relaxed);
}

using SlabRegistry = LiveAllocatorRegistry<SlabAllocator>;

// This thread's caches, one per SlabAllocator it has used. The destructor runs at thread exit.
struct ThreadCacheTable {
  struct Entry {
    std::uint64_t owner_id;
    SlabAllocator::ThreadCache* cache;
  };
  std::vector<Entry> entries;
  ~ThreadCacheTable();
};
// Trivially destructible, so it can be read even after tls_caches is gone (a later thread-exit
// destructor of the program may still free device memory).
thread_local bool tls_caches_gone __attribute__((tls_model("initial-exec"))) = false;
thread_local ThreadCacheTable tls_caches;
// The cache this thread used last, and its owner's id (ids are never reused, so a stale pair can never
// match a new allocator). initial-exec and trivially initialised: a plain %fs load on the hot path.
// tls_caches, a vector with a destructor, costs a __tls_get_addr call and an init check per access
// inside libgpushim.so (callgrind: ~10% of a slab pair).
thread_local std::uint64_t tls_last_owner __attribute__((tls_model("initial-exec"))) = 0;
thread_local SlabAllocator::ThreadCache* tls_last_cache __attribute__((tls_model("initial-exec"))) = nullptr;

}  // namespace

struct SlabAllocator::ThreadCache {
  struct Magazine {
    void** blocks = nullptr;
    std::uint32_t count = 0;
    std::uint32_t capacity = 0;
  };
  // Taken by the owner around its magazine sections with plain stores (allocators/owner_biased_lock.h),
  // by another thread only to empty the magazines (flush_every_thread), under the registry's mutex, so a
  // cache retire_thread_cache() has taken out of caches_ has no remote left. The magazines and
  // seen_flush_epoch are read and written under it.
  OwnerBiasedLock lock;
  SlabAllocator* owner = nullptr;
  std::uint64_t seen_flush_epoch = 0;
  std::unique_ptr<void*[]> slots;
  std::unique_ptr<Magazine[]> magazines;  // one per class
  CounterShard counters;
};

ThreadCacheTable::~ThreadCacheTable() {
  tls_caches_gone = true;
  tls_last_owner = 0;
  tls_last_cache = nullptr;
  SlabRegistry& registry = SlabRegistry::instance();
  std::lock_guard<std::mutex> lock(registry.mutex());
  for (const Entry& entry : entries) {
    if (SlabAllocator* owner = registry.find_locked(entry.owner_id)) owner->retire_thread_cache(entry.cache);
  }
  entries.clear();
}

SlabAllocator::SlabAllocator(MemoryProvider& provider, std::size_t max_small_size, bool thread_caches,
                             std::size_t idle_bytes, std::size_t slab_bytes, std::uint32_t min_blocks_per_slab) noexcept
    : provider_(provider),
      granularity_(std::max<std::size_t>(provider.granularity(), 1)),
      max_small_size_(round_up(std::clamp(max_small_size, kMinAlignment, kSlabMaxSizeLimit), kMinAlignment)),
      thread_caches_(thread_caches),
      idle_bytes_(idle_bytes),
      id_(SlabRegistry::instance().add(this)) {
  // Classes: every multiple of the alignment up to 1 KiB (512 B alignment forbids finer steps), then
  // four per doubling (1.25x apart), each rounded up to the alignment so that every slot of a slab is
  // aligned (1280 and 1792 become 1536 and 2048): rounding wastes at most 50% of a block below 2 KiB and
  // 25% above.
  for (std::size_t size = kMinAlignment; size <= 1024 && size <= max_small_size_; size += kMinAlignment)
    classes_.push_back(size);
  for (std::size_t base = 1024; classes_.back() < max_small_size_; base *= 2) {
    for (std::size_t step = 1; step <= 4; ++step) {
      const std::size_t size = round_up(base + step * (base / 4), kMinAlignment);
      if (size > max_small_size_) break;
      if (size > classes_.back()) classes_.push_back(size);
    }
    if (base * 2 > max_small_size_) break;
  }
  if (classes_.back() < max_small_size_) classes_.push_back(max_small_size_);

  class_lookup_.resize(max_small_size_ / kMinAlignment);
  std::size_t c = 0;
  for (std::size_t i = 0; i < class_lookup_.size(); ++i) {
    while (classes_[c] < (i + 1) * kMinAlignment) ++c;
    class_lookup_[i] = static_cast<std::uint16_t>(c);
  }

  depots_.reset(new ClassDepot[classes_.size()]);
  for (std::size_t i = 0; i < classes_.size(); ++i) {
    ClassDepot& depot = depots_[i];
    depot.block_bytes = classes_[i];
    // At least `min_blocks_per_slab` blocks, but never more than a 2 MiB slab (or one block) for it: a
    // class of 1 MiB blocks would otherwise take 16 MiB at a time.
    const std::size_t for_min_blocks = std::min(std::size_t{min_blocks_per_slab} * depot.block_bytes,
                                                std::max(kSlabTargetBytes, depot.block_bytes));
    depot.slab_bytes = round_up(std::max(slab_bytes, for_min_blocks), granularity_);
    depot.blocks_per_slab = static_cast<std::uint32_t>(depot.slab_bytes / depot.block_bytes);
    const std::size_t capacity = std::min<std::size_t>(kMagazineMaxBlocks, kMagazineBytes / depot.block_bytes);
    depot.magazine_capacity = capacity >= kMinMagazineBlocks ? static_cast<std::uint32_t>(capacity) : 0;
    magazine_slots_ += depot.magazine_capacity;
  }
}

SlabAllocator::~SlabAllocator() {
  {
    SlabRegistry& registry = SlabRegistry::instance();
    std::lock_guard<std::mutex> lock(registry.mutex());
    registry.remove_locked(id_);
    for (ThreadCache* cache : caches_) delete cache;  // their blocks go down with the slabs below
    caches_.clear();
  }
  for (std::size_t i = 0; i < classes_.size(); ++i) {
    ClassDepot& depot = depots_[i];
    std::lock_guard<std::mutex> lock(depot.mutex);
    for (const auto& [base, slab] : depot.slabs) {
      provider_.unmap(reinterpret_cast<void*>(base), depot.slab_bytes);
      provider_.release_reservation(reinterpret_cast<void*>(base), depot.slab_bytes);
    }
    depot.slabs.clear();
  }
  std::lock_guard<std::mutex> lock(large_mutex_);
  for (const auto& [base, mapped] : large_) {
    provider_.unmap(reinterpret_cast<void*>(base), mapped);
    provider_.release_reservation(reinterpret_cast<void*>(base), mapped);
  }
}

std::size_t SlabAllocator::class_block_bytes(std::size_t index) const noexcept {
  return index < classes_.size() ? classes_[index] : 0;
}

// ---- thread caches ----

SlabAllocator::ThreadCache* SlabAllocator::this_thread_cache() noexcept {
  if (tls_last_owner == id_) return tls_last_cache;
  if (tls_caches_gone || id_ == 0) return nullptr;
  ThreadCache* cache = nullptr;
  for (const ThreadCacheTable::Entry& entry : tls_caches.entries)
    if (entry.owner_id == id_) cache = entry.cache;
  if (!cache) cache = create_thread_cache();
  if (cache) {
    tls_last_owner = id_;
    tls_last_cache = cache;
  }
  return cache;
}

SlabAllocator::ThreadCache* SlabAllocator::create_thread_cache() noexcept {
  ThreadCache* cache = nullptr;
  try {
    cache = new ThreadCache;
    cache->owner = this;
    cache->slots.reset(new void*[magazine_slots_]);
    cache->magazines.reset(new ThreadCache::Magazine[classes_.size()]);
    void** next = cache->slots.get();
    for (std::size_t i = 0; i < classes_.size(); ++i) {
      cache->magazines[i].blocks = next;
      cache->magazines[i].capacity = depots_[i].magazine_capacity;
      next += depots_[i].magazine_capacity;
    }
    cache->seen_flush_epoch = flush_epoch_.load(std::memory_order_relaxed);

    SlabRegistry& registry = SlabRegistry::instance();
    std::lock_guard<std::mutex> lock(registry.mutex());
    // Drop entries of allocators destroyed since (their caches were freed with them).
    auto& entries = tls_caches.entries;
    entries.erase(std::remove_if(entries.begin(), entries.end(),
                                 [&](const ThreadCacheTable::Entry& e) { return registry.find_locked(e.owner_id) == nullptr; }),
                  entries.end());
    caches_.reserve(caches_.size() + 1);
    entries.push_back({id_, cache});
    caches_.push_back(cache);
    return cache;
  } catch (...) {
    delete cache;
    return nullptr;  // the caller falls back to the depot
  }
}

void SlabAllocator::flush_cache(ThreadCache& cache, bool may_release) noexcept {
  for (std::size_t i = 0; i < classes_.size(); ++i) {
    ThreadCache::Magazine& magazine = cache.magazines[i];
    if (magazine.count == 0) continue;
    depot_return(depots_[i], magazine.blocks, magazine.count, may_release);
    bump_owned<std::int64_t>(cache.counters.magazine_bytes,
                             -static_cast<std::int64_t>(magazine.count * depots_[i].block_bytes));
    magazine.count = 0;
  }
  cache.seen_flush_epoch = flush_epoch_.load(std::memory_order_relaxed);
}

void SlabAllocator::retire_thread_cache(ThreadCache* cache) noexcept {
  // Called with the registry lock held, from the exiting thread itself.
  flush_cache(*cache, /*may_release=*/false);
  fold_into(cache->counters, shared_counters_);
  caches_.erase(std::remove(caches_.begin(), caches_.end(), cache), caches_.end());
  delete cache;
}

void SlabAllocator::flush_this_thread() noexcept {
  if (tls_caches_gone) return;
  for (const ThreadCacheTable::Entry& entry : tls_caches.entries) {
    if (entry.owner_id != id_) continue;
    entry.cache->lock.owner_lock();
    flush_cache(*entry.cache, /*may_release=*/true);
    entry.cache->lock.owner_unlock();
  }
}

void SlabAllocator::flush_every_thread() noexcept {
  SlabRegistry& registry = SlabRegistry::instance();
  std::lock_guard<std::mutex> lock(registry.mutex());
  for (ThreadCache* cache : caches_) {
    // An empty cache costs no remote lock: a block its owner caches meanwhile is as if after this walk.
    if (cache->counters.magazine_bytes.load(std::memory_order_relaxed) == 0) continue;
    cache->lock.remote_lock();
    flush_cache(*cache, /*may_release=*/false);
    cache->lock.remote_unlock();
  }
}

void SlabAllocator::reset_locks_after_fork() noexcept {
  for (ThreadCache* cache : caches_) cache->lock.reset_after_fork();
}

// ---- depots ----

bool SlabAllocator::grow_locked(ClassDepot& depot) noexcept {
  void* base = provider_.reserve(depot.slab_bytes);
  if (base == nullptr) return false;
  if (!provider_.map(base, depot.slab_bytes)) {
    provider_.release_reservation(base, depot.slab_bytes);
    return false;
  }
  const auto address = reinterpret_cast<std::uintptr_t>(base);
  try {
    Slab slab;
    slab.base = address;
    slab.free_blocks.reserve(depot.blocks_per_slab);  // returns never allocate
    // Pushed high to low, so blocks are handed out in address order.
    for (std::uint32_t i = depot.blocks_per_slab; i-- > 0;) slab.free_blocks.push_back(i);
    auto it = depot.slabs.emplace(address, std::move(slab)).first;
    try {
      depot.partial.insert(address);
    } catch (...) {
      depot.slabs.erase(it);
      throw;
    }
  } catch (...) {
    provider_.unmap(base, depot.slab_bytes);
    provider_.release_reservation(base, depot.slab_bytes);
    return false;
  }
  ++depot.empty_slabs;
  empty_bytes_.fetch_add(depot.slab_bytes, std::memory_order_relaxed);
  add_reserved(depot.slab_bytes);
  return true;
}

std::size_t SlabAllocator::depot_take(ClassDepot& depot, void** out, std::size_t count) noexcept {
  std::lock_guard<std::mutex> lock(depot.mutex);
  std::size_t taken = 0;
  while (taken < count) {
    if (depot.partial.empty() && !grow_locked(depot)) break;
    const std::uintptr_t base = *depot.partial.begin();
    Slab& slab = depot.slabs.find(base)->second;
    if (slab.free_blocks.size() == depot.blocks_per_slab) {
      --depot.empty_slabs;
      empty_bytes_.fetch_sub(depot.slab_bytes, std::memory_order_relaxed);
    }
    while (taken < count && !slab.free_blocks.empty()) {
      out[taken++] = reinterpret_cast<void*>(base + slab.free_blocks.back() * depot.block_bytes);
      slab.free_blocks.pop_back();
    }
    if (slab.free_blocks.empty()) depot.partial.erase(depot.partial.begin());
  }
  return taken;
}

void SlabAllocator::depot_return(ClassDepot& depot, void* const* blocks, std::size_t count,
                                 bool may_release) noexcept {
  std::lock_guard<std::mutex> lock(depot.mutex);
  ++depot.returns;
  // Blocks handed back together mostly share a slab (a magazine refills from the lowest partial one), so
  // the slab of the block before is checked first: a range check instead of a walk down the map, inside
  // the hold other threads' refills queue behind.
  Slab* last = nullptr;
  for (std::size_t i = 0; i < count; ++i) {
    const auto address = reinterpret_cast<std::uintptr_t>(blocks[i]);
    if (last == nullptr || address < last->base || address >= last->base + depot.slab_bytes) {
      auto it = depot.slabs.upper_bound(address);
      if (it == depot.slabs.begin()) continue;  // not ours; the router validates pointers
      --it;
      if (address >= it->second.base + depot.slab_bytes) continue;
      last = &it->second;
    }
    Slab& slab = *last;
    slab.free_blocks.push_back(static_cast<std::uint32_t>((address - slab.base) / depot.block_bytes));
    if (slab.free_blocks.size() == 1) {
      try {
        depot.partial.insert(slab.base);
      } catch (...) {
        slab.free_blocks.pop_back();  // host out of memory: lose the block rather than crash
      }
    }
    if (slab.free_blocks.size() == depot.blocks_per_slab) {
      ++depot.empty_slabs;
      empty_bytes_.fetch_add(depot.slab_bytes, std::memory_order_relaxed);
    }
  }
  if (may_release && depot.empty_slabs > kIdleEmptySlabsPerClass &&
      empty_bytes_.load(std::memory_order_relaxed) > idle_bytes_) {
    // Down to one idle slab in this class, or until all classes together are back within the budget.
    const std::size_t over = empty_bytes_.load(std::memory_order_relaxed) - idle_bytes_;
    const std::size_t slabs_over = (over + depot.slab_bytes - 1) / depot.slab_bytes;
    const std::size_t keep = depot.empty_slabs > kIdleEmptySlabsPerClass + slabs_over
                                 ? depot.empty_slabs - slabs_over
                                 : kIdleEmptySlabsPerClass;
    release_empty_slabs_locked(depot, keep);
  }
}

std::size_t SlabAllocator::release_empty_slabs_locked(ClassDepot& depot, std::size_t keep) noexcept {
  std::size_t released = 0;
  // Highest addresses first: allocation prefers low slabs, so high ones are the least likely reused.
  for (auto it = depot.slabs.end(); it != depot.slabs.begin() && depot.empty_slabs > keep;) {
    --it;
    if (it->second.free_blocks.size() != depot.blocks_per_slab) continue;
    void* base = reinterpret_cast<void*>(it->first);
    provider_.unmap(base, depot.slab_bytes);
    provider_.release_reservation(base, depot.slab_bytes);
    depot.partial.erase(it->first);
    it = depot.slabs.erase(it);
    --depot.empty_slabs;
    released += depot.slab_bytes;
  }
  empty_bytes_.fetch_sub(released, std::memory_order_relaxed);
  bytes_reserved_.fetch_sub(released, std::memory_order_relaxed);
  return released;
}

std::size_t SlabAllocator::release_empty_slabs() noexcept {
  std::size_t released = 0;
  for (std::size_t i = 0; i < classes_.size(); ++i) {
    std::lock_guard<std::mutex> lock(depots_[i].mutex);
    released += release_empty_slabs_locked(depots_[i], 0);
  }
  return released;
}

void SlabAllocator::add_reserved(std::size_t bytes) noexcept {
  raise_peak(peak_bytes_reserved_, bytes_reserved_.fetch_add(bytes, std::memory_order_relaxed) + bytes);
}

// ---- allocate / deallocate ----

// Out of memory: this thread's magazines may pin otherwise empty slabs, and empty slabs idling in other
// classes may be what is missing. Other threads' magazines are out of reach here (release_cached asks
// them to flush). True when something went back, so a retry can succeed.
bool SlabAllocator::reclaim_for_retry(ThreadCache* locked_own) noexcept {
  if (locked_own) flush_cache(*locked_own, /*may_release=*/true);  // the caller holds its lock
  else flush_this_thread();
  return release_empty_slabs() != 0;
}

void* SlabAllocator::allocate(std::size_t bytes, StreamHandle) noexcept {
  void* p = nullptr;
  if (bytes != 0) p = bytes <= max_small_size_ ? allocate_small(bytes) : allocate_large(bytes);
  // Under a NoNewPeakScope an arena-backed slab may be refused growth: the caller waits and asks again.
  if (p == nullptr && !new_peak_refused()) failed_allocations_.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void* SlabAllocator::allocate_small(std::size_t bytes) noexcept {
  const std::size_t c = class_of(bytes);
  ClassDepot& depot = depots_[c];
  const auto block = static_cast<std::int64_t>(depot.block_bytes);
  ThreadCache* cache = thread_caches_ && depot.magazine_capacity != 0 ? this_thread_cache() : nullptr;
  void* p = nullptr;
  if (cache != nullptr) {
    cache->lock.owner_lock();
    if (cache->seen_flush_epoch != flush_epoch_.load(std::memory_order_relaxed)) flush_cache(*cache, true);
    ThreadCache::Magazine& magazine = cache->magazines[c];
    if (magazine.count == 0) {
      const std::size_t batch = magazine.capacity / 2;
      std::size_t got = depot_take(depot, magazine.blocks, batch);
      if (got == 0 && reclaim_for_retry(cache)) got = depot_take(depot, magazine.blocks, batch);
      if (got == 0) {
        cache->lock.owner_unlock();
        return nullptr;
      }
      magazine.count = static_cast<std::uint32_t>(got);
      bump_owned<std::int64_t>(cache->counters.magazine_bytes, static_cast<std::int64_t>(got) * block);
    }
    p = magazine.blocks[--magazine.count];
    CounterShard& counters = cache->counters;
    bump_owned<std::int64_t>(counters.magazine_bytes, -block);
    bump_owned<std::uint64_t>(counters.allocations, 1);
    bump_owned<std::int64_t>(counters.bytes_in_use, static_cast<std::int64_t>(bytes));
    bump_owned<std::int64_t>(counters.internal_waste, block - static_cast<std::int64_t>(bytes));
    cache->lock.owner_unlock();
    return p;
  }
  if (depot_take(depot, &p, 1) == 0 && (!reclaim_for_retry() || depot_take(depot, &p, 1) == 0))
    return nullptr;
  bump_shared<std::uint64_t>(shared_counters_.allocations, 1);
  bump_shared<std::int64_t>(shared_counters_.bytes_in_use, static_cast<std::int64_t>(bytes));
  bump_shared<std::int64_t>(shared_counters_.internal_waste, block - static_cast<std::int64_t>(bytes));
  return p;
}

void SlabAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  if (p == nullptr || bytes == 0) return;
  if (bytes > max_small_size_) {
    deallocate_large(p, bytes);
    return;
  }
  const BlockToFree one{p, bytes, stream};
  deallocate_class_run(class_of(bytes), &one, 1);
}

// A depot_return's blocks are gathered on the stack: a hand-back's batch call holds at most
// kBlocksPerBatchCall (allocators/allocator.h) and a magazine sends at most kMagazineMaxBlocks / 2 with
// it, so those take one hold of the lock.
constexpr std::size_t kBlocksPerDepotReturn = kBlocksPerBatchCall + kMagazineMaxBlocks / 2;

void SlabAllocator::deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept {
  const auto small = [this](const BlockToFree& b) {
    return b.p != nullptr && b.bytes != 0 && b.bytes <= max_small_size_;
  };
  BlockToFree* const end = blocks + count;
  BlockToFree* const rest = std::partition(blocks, end, small);
  for (BlockToFree* b = rest; b != end; ++b)
    if (b->p != nullptr && b->bytes != 0) deallocate_large(b->p, b->bytes);
  std::sort(blocks, rest,
            [this](const BlockToFree& a, const BlockToFree& b) { return class_of(a.bytes) < class_of(b.bytes); });
  for (BlockToFree* run = blocks; run != rest;) {
    const std::size_t c = class_of(run->bytes);
    BlockToFree* run_end = run + 1;
    while (run_end != rest && class_of(run_end->bytes) == c) ++run_end;
    deallocate_class_run(c, run, static_cast<std::size_t>(run_end - run));
    run = run_end;
  }
}

// One rule for a lone free and a hand-back's run: a run the magazine has no room for sends the
// magazine's top half away first, so that the frees after it find room (a thread that only frees takes
// the depot's lock once per half magazine, not once per free); the magazine then takes what fits, and
// the half and the rest go back together, one hold of the depot's lock.
void SlabAllocator::deallocate_class_run(std::size_t c, const BlockToFree* run, std::size_t count) noexcept {
  ClassDepot& depot = depots_[c];
  const auto block = static_cast<std::int64_t>(depot.block_bytes);
  std::int64_t bytes = 0;
  for (std::size_t i = 0; i < count; ++i) bytes += static_cast<std::int64_t>(run[i].bytes);
  const std::int64_t waste = static_cast<std::int64_t>(count) * block - bytes;

  void* gathered[kBlocksPerDepotReturn];
  std::size_t gathered_count = 0;
  const auto to_depot = [&](void* p) {
    gathered[gathered_count++] = p;
    if (gathered_count == kBlocksPerDepotReturn) {
      depot_return(depot, gathered, gathered_count, /*may_release=*/true);
      gathered_count = 0;
    }
  };

  ThreadCache* cache = thread_caches_ && depot.magazine_capacity != 0 ? this_thread_cache() : nullptr;
  if (cache == nullptr) {
    for (std::size_t i = 0; i < count; ++i) to_depot(run[i].p);
    if (gathered_count != 0) depot_return(depot, gathered, gathered_count, /*may_release=*/true);
    bump_shared<std::uint64_t>(shared_counters_.deallocations, count);
    bump_shared<std::int64_t>(shared_counters_.bytes_in_use, -bytes);
    bump_shared<std::int64_t>(shared_counters_.internal_waste, -waste);
    return;
  }
  cache->lock.owner_lock();
  if (cache->seen_flush_epoch != flush_epoch_.load(std::memory_order_relaxed)) flush_cache(*cache, true);
  ThreadCache::Magazine& magazine = cache->magazines[c];
  const std::uint32_t before = magazine.count;
  if (magazine.count + count > magazine.capacity) {
    const std::uint32_t half = std::min(magazine.capacity / 2, magazine.count);
    for (std::uint32_t i = magazine.count - half; i < magazine.count; ++i) to_depot(magazine.blocks[i]);
    magazine.count -= half;
  }
  std::size_t kept = 0;
  while (kept < count && magazine.count < magazine.capacity) magazine.blocks[magazine.count++] = run[kept++].p;
  for (std::size_t i = kept; i < count; ++i) to_depot(run[i].p);
  if (gathered_count != 0) depot_return(depot, gathered, gathered_count, /*may_release=*/true);
  CounterShard& counters = cache->counters;
  bump_owned<std::int64_t>(counters.magazine_bytes,
                           (static_cast<std::int64_t>(magazine.count) - static_cast<std::int64_t>(before)) * block);
  bump_owned<std::uint64_t>(counters.deallocations, count);
  bump_owned<std::int64_t>(counters.bytes_in_use, -bytes);
  bump_owned<std::int64_t>(counters.internal_waste, -waste);
  cache->lock.owner_unlock();
}

void* SlabAllocator::allocate_large(std::size_t bytes) noexcept {
  if (bytes > std::numeric_limits<std::size_t>::max() - granularity_) return nullptr;
  const std::size_t mapped = round_up(bytes, granularity_);
  void* base = nullptr;
  for (int attempt = 0; attempt < 2 && base == nullptr; ++attempt) {
    if (attempt == 1 && !reclaim_for_retry()) break;
    base = provider_.reserve(mapped);
    if (base != nullptr && !provider_.map(base, mapped)) {
      provider_.release_reservation(base, mapped);
      base = nullptr;
    }
  }
  if (base == nullptr) return nullptr;
  try {
    std::lock_guard<std::mutex> lock(large_mutex_);
    large_.emplace(reinterpret_cast<std::uintptr_t>(base), mapped);
  } catch (...) {
    provider_.unmap(base, mapped);
    provider_.release_reservation(base, mapped);
    return nullptr;
  }
  add_reserved(mapped);
  bump_shared<std::uint64_t>(shared_counters_.allocations, 1);
  bump_shared<std::int64_t>(shared_counters_.bytes_in_use, static_cast<std::int64_t>(bytes));
  bump_shared<std::int64_t>(shared_counters_.internal_waste, static_cast<std::int64_t>(mapped - bytes));
  return base;
}

void SlabAllocator::deallocate_large(void* p, std::size_t bytes) noexcept {
  std::size_t mapped = 0;
  {
    std::lock_guard<std::mutex> lock(large_mutex_);
    auto it = large_.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == large_.end()) return;  // not ours; the router validates pointers
    mapped = it->second;
    large_.erase(it);
  }
  // A run of whole granules is only reused by a request of the same granule count; keeping it would
  // pin memory the vmm arena (tiered) or another size could use, so it goes back at once.
  provider_.unmap(p, mapped);
  provider_.release_reservation(p, mapped);
  bytes_reserved_.fetch_sub(mapped, std::memory_order_relaxed);
  bump_shared<std::uint64_t>(shared_counters_.deallocations, 1);
  bump_shared<std::int64_t>(shared_counters_.bytes_in_use, -static_cast<std::int64_t>(bytes));
  bump_shared<std::int64_t>(shared_counters_.internal_waste, -static_cast<std::int64_t>(mapped - bytes));
}

// ---- release and stats ----

std::size_t SlabAllocator::release_cached() noexcept {
  flush_this_thread();
  // Other threads flush their magazines at their next call into this allocator.
  flush_epoch_.fetch_add(1, std::memory_order_relaxed);
  const std::size_t released = release_empty_slabs();
  sample_peak_in_use();
  return released;
}

void SlabAllocator::fold_into(const CounterShard& from, CounterShard& to) noexcept {
  bump_shared(to.allocations, from.allocations.load(std::memory_order_relaxed));
  bump_shared(to.deallocations, from.deallocations.load(std::memory_order_relaxed));
  bump_shared(to.bytes_in_use, from.bytes_in_use.load(std::memory_order_relaxed));
  bump_shared(to.internal_waste, from.internal_waste.load(std::memory_order_relaxed));
  bump_shared(to.magazine_bytes, from.magazine_bytes.load(std::memory_order_relaxed));
}

void SlabAllocator::add_to_stats(const CounterShard& shard, AllocatorStats& s, std::int64_t& in_use,
                                 std::int64_t& waste, std::int64_t& magazines) const noexcept {
  s.allocations += shard.allocations.load(std::memory_order_relaxed);
  s.deallocations += shard.deallocations.load(std::memory_order_relaxed);
  in_use += shard.bytes_in_use.load(std::memory_order_relaxed);
  waste += shard.internal_waste.load(std::memory_order_relaxed);
  magazines += shard.magazine_bytes.load(std::memory_order_relaxed);
}

// Live bytes are split over per-thread shards, so the peak is sampled (at stats() and release_cached())
// rather than tracked on every call: an exact peak would need one shared counter all threads write.
void SlabAllocator::sample_peak_in_use() noexcept { (void)stats(); }

std::size_t SlabAllocator::free_bytes_kept() const noexcept {
  std::int64_t magazines = 0;
  {
    SlabRegistry& registry = SlabRegistry::instance();
    std::lock_guard<std::mutex> lock(registry.mutex());
    for (const ThreadCache* cache : caches_) magazines += cache->counters.magazine_bytes.load(std::memory_order_relaxed);
  }
  // Counters are read one after another while their owners run: a sum may be briefly off, never below 0.
  return empty_slab_bytes() + static_cast<std::size_t>(std::max<std::int64_t>(magazines, 0));
}

AllocatorStats SlabAllocator::stats() const noexcept {
  AllocatorStats s;
  std::int64_t in_use = 0, waste = 0, magazines = 0;
  {
    SlabRegistry& registry = SlabRegistry::instance();
    std::lock_guard<std::mutex> lock(registry.mutex());
    for (const ThreadCache* cache : caches_) add_to_stats(cache->counters, s, in_use, waste, magazines);
  }
  add_to_stats(shared_counters_, s, in_use, waste, magazines);
  s.failed_allocations = failed_allocations_.load(std::memory_order_relaxed);
  s.bytes_in_use = static_cast<std::uint64_t>(std::max<std::int64_t>(in_use, 0));
  s.internal_waste = static_cast<std::uint64_t>(std::max<std::int64_t>(waste, 0));
  s.bytes_reserved = bytes_reserved_.load(std::memory_order_relaxed);
  s.peak_bytes_reserved = peak_bytes_reserved_.load(std::memory_order_relaxed);
  const std::uint64_t used = s.bytes_in_use + s.internal_waste;
  s.bytes_cached = s.bytes_reserved > used ? s.bytes_reserved - used : 0;

  raise_peak(peak_bytes_in_use_, s.bytes_in_use);
  s.peak_bytes_in_use = peak_bytes_in_use_.load(std::memory_order_relaxed);

  for (std::size_t i = classes_.size(); i-- > 0;) {
    std::lock_guard<std::mutex> lock(depots_[i].mutex);
    if (!depots_[i].partial.empty()) {
      s.largest_free_block = depots_[i].block_bytes;
      break;
    }
  }
  (void)magazines;
  return s;
}

std::size_t SlabAllocator::slab_count() const noexcept {
  std::size_t count = 0;
  for (std::size_t i = 0; i < classes_.size(); ++i) {
    std::lock_guard<std::mutex> lock(depots_[i].mutex);
    count += depots_[i].slabs.size();
  }
  return count;
}

std::uint64_t SlabAllocator::class_depot_returns(std::size_t index) const noexcept {
  std::lock_guard<std::mutex> lock(depots_[index].mutex);
  return depots_[index].returns;
}

std::unique_ptr<Allocator> make_slab_allocator(MemoryProvider& provider, const Settings& settings) {
  const std::size_t max_size =
      settings.slab_max_size != 0 ? static_cast<std::size_t>(settings.slab_max_size) : kDefaultSlabMaxSize;
  return std::make_unique<SlabAllocator>(provider, max_size, /*thread_caches=*/true, kDefaultSlabIdleBytes);
}

}  // namespace gpushim
