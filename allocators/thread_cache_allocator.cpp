#include "allocators/thread_cache_allocator.h"

#include <pthread.h>

#include <algorithm>
#include <new>
#include <unordered_map>

#include "allocators/growth_policy.h"
#include "allocators/live_allocator_registry.h"
#include "allocators/owner_biased_lock.h"

namespace gpushim {
namespace {

constexpr std::size_t kSmallClassStep = kMinAlignment;  // 512 B classes up to kSmallClassLimit
constexpr std::size_t kSmallClassLimit = 4096;
constexpr std::size_t kSmallClasses = kSmallClassLimit / kSmallClassStep;
constexpr unsigned kClassesPerDoublingLog2 = 3;  // 8 classes per doubling above kSmallClassLimit
constexpr unsigned kSmallClassLimitLog2 = 12;

std::size_t class_index(std::size_t bytes) noexcept {
  if (bytes <= kSmallClassLimit) return bytes == 0 ? 0 : (bytes - 1) / kSmallClassStep;
  const unsigned top = 63u - static_cast<unsigned>(__builtin_clzll(bytes - 1));  // 2^top < bytes <= 2^(top+1)
  const std::size_t sub = ((bytes - 1) >> (top - kClassesPerDoublingLog2)) & ((1u << kClassesPerDoublingLog2) - 1);
  return kSmallClasses + (top - kSmallClassLimitLog2) * (std::size_t{1} << kClassesPerDoublingLog2) + sub;
}

constexpr std::size_t computed_class_size(std::size_t index) noexcept {
  if (index < kSmallClasses) return (index + 1) * kSmallClassStep;
  const std::size_t above = index - kSmallClasses;
  const unsigned top = kSmallClassLimitLog2 + static_cast<unsigned>(above >> kClassesPerDoublingLog2);
  const std::size_t sub = above & ((1u << kClassesPerDoublingLog2) - 1);
  return ((std::size_t{1} << kClassesPerDoublingLog2) + sub + 1) << (top - kClassesPerDoublingLog2);
}

struct ClassSizes {
  std::size_t bytes[ThreadCacheAllocator::kClassCount];
};
constexpr ClassSizes make_class_sizes() noexcept {
  ClassSizes sizes{};
  for (std::size_t c = 0; c < ThreadCacheAllocator::kClassCount; ++c) sizes.bytes[c] = computed_class_size(c);
  return sizes;
}
// A load, not shifts, on every call.
constexpr ClassSizes kClassSizes = make_class_sizes();
static_assert(kClassSizes.bytes[ThreadCacheAllocator::kClassCount - 1] == ThreadCacheAllocator::kMaxCachedBytes,
              "the last class is the largest request cached");

std::size_t class_size(std::size_t index) noexcept { return kClassSizes.bytes[index]; }

using CacheRegistry = LiveAllocatorRegistry<ThreadCacheAllocator>;

// This thread's caches, one per allocator it used; given back when the thread exits.
struct ThreadCacheList {
  struct Entry {
    std::uint64_t owner;
    ThreadCacheAllocator::ThreadCache* cache;
  };
  std::vector<Entry> entries;
  ~ThreadCacheList();
};

// initial-exec: a plain %fs load inside the preloaded libgpushim.so (its TLS is in the static block).
thread_local std::uint64_t t_last_owner __attribute__((tls_model("initial-exec"))) = 0;
thread_local ThreadCacheAllocator::ThreadCache* t_last_cache __attribute__((tls_model("initial-exec"))) = nullptr;
thread_local bool t_list_gone __attribute__((tls_model("initial-exec"))) = false;
thread_local ThreadCacheList t_caches;

}  // namespace

std::size_t ThreadCacheAllocator::class_bytes_for(std::size_t bytes) noexcept {
  return bytes > kMaxCachedBytes ? bytes : class_size(class_index(bytes));
}

// The owner takes `lock` on each call with plain stores (allocators/owner_biased_lock.h); another thread
// takes it only to empty the cache (release_cached, a flush of parked blocks, the tests' counts), always
// under caches_mutex_, so a cache retire() has taken out of caches_ has no remote left. Its sections
// are a few loads and stores and call nothing that could wait for a remote.
struct ThreadCacheAllocator::ThreadCache {
  OwnerBiasedLock lock;
  std::uint32_t count[kClassCount] = {};
  std::unique_ptr<void*[]> slots;
  // Blocks above kMaxCachedBytes by the exact size the backend was asked for, oldest first.
  LargeSlot large[kLargeSlots] = {};
  std::uint32_t large_count = 0;
  // Counted in caches_with_large_. Written under `lock`; a flush reads it without, to skip caches that
  // never parked since the last flush.
  std::atomic<bool> counted_with_large{false};
  // Sizes of the blocks another thread's miss last took from these slots (to spare the backend a
  // growth): the owner's next request of one of them may grow the backend rather than take in turn.
  std::size_t taken_sizes[kLargeSlots] = {};
  std::uint32_t taken_count = 0;
  // LargeSlots::while_contended, the owner's only: parking since a large backend call found the lock
  // held, and the large backend calls in a row since that found it free.
  bool parking_large = false;
  std::uint32_t calm_large_calls = 0;
  std::atomic<std::uint64_t> large_bytes{0};  // written under `lock`, read by stats() without it
  // Written under `lock`, read by stats() without it.
  std::atomic<std::uint64_t> cached_bytes{0};
  std::atomic<std::uint64_t> allocate_hits{0};
  std::atomic<std::uint64_t> deallocate_hits{0};
  // Blocks the owner's own misses and evictions gave to the backend (give_to_backend), not program
  // frees: the owner's only (bump, outside `lock`), read by stats(); other threads' flushes of this
  // cache count in flushed_. A shared counter here was ~1.2% of 16 threads' wall-clock samples on the
  // H200 (docs/perf-notes.md, forty-eighth session).
  std::atomic<std::uint64_t> flushed{0};
  // Class size minus requested size over the live blocks this thread allocated or freed (a signed sum
  // kept modulo 2^64: a block may be allocated on one thread and freed on another).
  std::atomic<std::uint64_t> rounding{0};

  // Owner-only counters: a load and a store, no locked instruction.
  static void bump(std::atomic<std::uint64_t>& counter, std::uint64_t by) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }
  static void drop(std::atomic<std::uint64_t>& counter, std::uint64_t by) noexcept {
    counter.store(counter.load(std::memory_order_relaxed) - by, std::memory_order_relaxed);
  }
};

namespace {
// Moves a cache's large slots to `out` (room for kLargeSlots). Under the cache's lock. The cache stays
// counted in caches_with_large_: its owner's misses come here, and its next large free would count it
// again at once. Counted out and in at every miss, that one line took ~9% of the samples of a
// wall-clock profile of 16 threads of mixed sizes on the H200 (docs/perf-notes.md, forty-seventh
// session). A flush walk and the thread's exit uncount it (uncount_large).
std::size_t take_large_slots(ThreadCacheAllocator::ThreadCache* cache, ThreadCacheAllocator::LargeSlot* out) noexcept {
  const std::size_t n = cache->large_count;
  std::copy(cache->large, cache->large + n, out);
  cache->large_count = 0;
  cache->large_bytes.store(0, std::memory_order_relaxed);
  return n;
}

// The walks' and the exit's: the cache parks nothing now. Under the cache's lock.
void uncount_large(ThreadCacheAllocator::ThreadCache* cache, std::atomic<std::size_t>& caches_with_large) noexcept {
  if (cache->counted_with_large.load(std::memory_order_relaxed)) {
    cache->counted_with_large.store(false, std::memory_order_relaxed);
    caches_with_large.fetch_sub(1, std::memory_order_relaxed);
  }
}

// True when `bytes` is the size of a block another thread's miss took from this cache's slots; that
// record is spent by this request, and every other one with it where it is not (the next miss only).
bool forget_taken_size(ThreadCacheAllocator::ThreadCache* cache, std::size_t bytes) noexcept {
  for (std::uint32_t i = 0; i < cache->taken_count; ++i) {
    if (cache->taken_sizes[i] != bytes) continue;
    cache->taken_sizes[i] = cache->taken_sizes[--cache->taken_count];
    return true;
  }
  cache->taken_count = 0;
  return false;
}
}  // namespace

ThreadCacheList::~ThreadCacheList() {
  t_list_gone = true;
  t_last_owner = 0;
  t_last_cache = nullptr;
  CacheRegistry& r = CacheRegistry::instance();
  std::lock_guard<std::mutex> guard(r.mutex());
  for (const Entry& entry : entries) {
    if (ThreadCacheAllocator* owner = r.find_locked(entry.owner)) owner->retire(entry.cache);
  }
}

ThreadCacheAllocator::ThreadCacheAllocator(std::unique_ptr<Allocator> inner, LargeSlots large_slots) noexcept
    : inner_(std::move(inner)),
      large_slots_(inner_->can_allocate_without_growing() ? large_slots : LargeSlots::never),
      lock_waits_(inner_->lock_wait_counter()),
      id_(CacheRegistry::instance().add(this)) {
  std::size_t slot = 0;
  for (std::size_t c = 0; c < kClassCount; ++c) {
    const std::size_t by_bytes = std::max<std::size_t>(1, kClassBytes / class_size(c));
    capacity_[c] = static_cast<std::uint32_t>(std::min(kMaxBlocksPerClass, by_bytes));
    first_slot_[c] = static_cast<std::uint32_t>(slot);
    slot += capacity_[c];
  }
  slot_count_ = slot;
  try {
    depot_.resize(kClassCount);
  } catch (...) {
  }
}

ThreadCacheAllocator::~ThreadCacheAllocator() {
  {
    CacheRegistry& r = CacheRegistry::instance();
    std::lock_guard<std::mutex> guard(r.mutex());
    r.remove_locked(id_);
  }
  release_cached();  // every block back to the backend while it still exists
  std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
  for (ThreadCache* cache : caches_) delete cache;  // a thread still holding it finds id_ gone, see above
}

// The common case inline (callgrind: ~26 Ir per call as a call of its own); the rest in find_thread_cache.
__attribute__((always_inline)) inline ThreadCacheAllocator::ThreadCache* ThreadCacheAllocator::this_thread_cache() noexcept {
  if (t_last_owner == id_) return t_last_cache;
  return find_thread_cache();
}

ThreadCacheAllocator::ThreadCache* ThreadCacheAllocator::find_thread_cache() noexcept {
  if (id_ == 0 || t_list_gone) return nullptr;
  for (const ThreadCacheList::Entry& entry : t_caches.entries) {
    if (entry.owner == id_) {
      t_last_owner = id_;
      t_last_cache = entry.cache;
      return entry.cache;
    }
  }
  return create_thread_cache();
}

ThreadCacheAllocator::ThreadCache* ThreadCacheAllocator::create_thread_cache() noexcept {
  ThreadCache* cache = nullptr;
  try {
    cache = new ThreadCache;
    cache->slots.reset(new void*[slot_count_]);
    {
      std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
      caches_.push_back(cache);
    }
    // Entries of allocators destroyed since are dropped here, so a long-lived thread's list stays short.
    {
      CacheRegistry& r = CacheRegistry::instance();
      std::lock_guard<std::mutex> guard(r.mutex());
      auto& entries = t_caches.entries;
      entries.erase(std::remove_if(entries.begin(), entries.end(),
                                   [&](const ThreadCacheList::Entry& e) { return r.find_locked(e.owner) == nullptr; }),
                    entries.end());
      entries.push_back({id_, cache});
    }
  } catch (...) {
    if (cache) {
      std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
      caches_.erase(std::remove(caches_.begin(), caches_.end(), cache), caches_.end());
    }
    delete cache;
    return nullptr;  // no host memory: this call passes through
  }
  t_last_owner = id_;
  t_last_cache = cache;
  return cache;
}

// A miss of any size: while large blocks are parked in some thread, the backend may grow only once they
// are back in it. The threads they are taken from remember their sizes: the owner's next request of one
// of them may grow the backend (allocate_taken_size). Without that, with fewer blocks mapped than
// threads looping on one size (the arena grows by exactly what a 256 MiB-1 GiB request needs, and a
// thread that finds another's parked block takes it instead of growing), each miss would empty every
// cache, whose owners would then miss and empty every cache in turn, for good. A thread whose sizes
// change (a growing KV cache, a varying batch) asks for sizes nobody took from it: it takes, it does not
// grow. Only the large ones: giving back every cached small block too whenever the arena would grow
// was tried, and on the KV cache loop reserved 1.14-1.24x the peak live back to back where
// the large ones alone reserve 1.07-1.12x (tests/kv_cache_fit_test.cpp): the small blocks came back in
// the middle of the growing cache blocks and split the ranges those would have reused.
// Inline into the misses: no extra call where no large block is parked (callgrind, fenced pairs).
__attribute__((always_inline)) inline void* ThreadCacheAllocator::allocate_from_backend(std::size_t bytes,
                                                                                       StreamHandle stream) noexcept {
  if (caches_with_large_.load(std::memory_order_relaxed) != 0 ||
      depot_large_blocks_.load(std::memory_order_relaxed) != 0) {
    const std::uint64_t flushes_seen = large_flushes_.load(std::memory_order_acquire);
    if (void* p = inner_->allocate_without_growing(bytes, stream)) return p;
    flush_large_everywhere(/*remember_taken=*/true, flushes_seen);
  }
  return inner_->allocate(bytes, stream);
}

// A request of a size another thread's miss took from this thread's slots: the backend may grow for it
// with blocks still parked elsewhere. Out of memory, those come back too and it is tried once more (the
// failure the backend counted on the way is not the caller's).
void* ThreadCacheAllocator::allocate_taken_size(std::size_t bytes, StreamHandle stream) noexcept {
  if (void* p = inner_->allocate(bytes, stream)) return p;
  if (caches_with_large_.load(std::memory_order_relaxed) == 0 && depot_large_blocks_.load(std::memory_order_relaxed) == 0)
    return nullptr;
  flush_large_everywhere(/*remember_taken=*/false);
  void* p = inner_->allocate(bytes, stream);
  // Under a NoNewPeakScope the first no was a refusal to grow, which the backend did not count.
  if (p && !new_peak_refused()) recovered_failures_.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void* ThreadCacheAllocator::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  if (bytes > kMaxCachedBytes) return allocate_large(bytes, stream);
  const std::size_t c = class_index(bytes);
  const std::size_t rounding = class_size(c) - bytes;
  ThreadCache* cache = this_thread_cache();
  if (!cache) {
    void* p = inner_->allocate(class_size(c), stream);
    if (p) untracked_rounding_.fetch_add(rounding, std::memory_order_relaxed);
    return p;
  }
  cache->lock.owner_lock();
  if (std::uint32_t n = cache->count[c]) {
    void* p = cache->slots[first_slot_[c] + n - 1];
    cache->count[c] = n - 1;
    ThreadCache::drop(cache->cached_bytes, class_size(c));
    ThreadCache::bump(cache->allocate_hits, 1);
    ThreadCache::bump(cache->rounding, rounding);
    cache->lock.owner_unlock();
    return p;
  }
  ThreadCache::bump(cache->rounding, rounding);  // taken back below if the miss fails
  // Before the backend is asked, it gets this thread's parked large blocks, as at a large miss: it then
  // sees the thread's frees and requests in the program's order, and places the block as it would
  // with no cache (tests/kv_cache_fit_test.cpp, "ThreadCached").
  LargeSlot own[kLargeSlots];
  const std::size_t own_large = cache->large_count != 0 ? take_large_slots(cache, own) : 0;
  cache->lock.owner_unlock();
  if (own_large) give_to_backend(own, own_large, cache);
  // A miss: the depot (blocks of exited threads) first, else the backend. One block, not a batch (the
  // header says what batches cost: +160 Ir a fenced 64 KiB pair through the cache, and no gain for
  // 16 threads under one arena lock).
  void* p = nullptr;
  if (depot_blocks_.load(std::memory_order_relaxed) != 0 && take_from_depot(c, &p, 1) == 1) {
    depot_hits_.fetch_add(1, std::memory_order_relaxed);
    return p;
  }
  p = allocate_from_backend(class_size(c), stream);
  if (!p) {
    cache->lock.owner_lock();
    ThreadCache::drop(cache->rounding, rounding);
    cache->lock.owner_unlock();
  }
  return p;
}

__attribute__((always_inline)) inline bool ThreadCacheAllocator::keep_small(ThreadCache* cache, void* p,
                                                                           std::size_t bytes,
                                                                           std::size_t* block) noexcept {
  const std::size_t c = class_index(bytes);
  *block = class_size(c);
  if (!cache) {
    untracked_rounding_.fetch_sub(*block - bytes, std::memory_order_relaxed);
    return false;
  }
  cache->lock.owner_lock();
  ThreadCache::drop(cache->rounding, *block - bytes);
  const std::uint32_t n = cache->count[c];
  if (n < capacity_[c] && cache->cached_bytes.load(std::memory_order_relaxed) + *block <= kMaxBytesPerThread) {
    cache->slots[first_slot_[c] + n] = p;
    cache->count[c] = n + 1;
    ThreadCache::bump(cache->cached_bytes, *block);
    ThreadCache::bump(cache->deallocate_hits, 1);
    cache->lock.owner_unlock();
    return true;
  }
  cache->lock.owner_unlock();
  return false;  // full: the backend takes it (the cached ones stay the hot ones)
}

void ThreadCacheAllocator::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  if (bytes > kMaxCachedBytes) return deallocate_large(p, bytes, stream);
  std::size_t block = 0;
  if (keep_small(this_thread_cache(), p, bytes, &block)) return;
  inner_->deallocate(p, block, stream);
}

void ThreadCacheAllocator::deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept {
  ThreadCache* cache = this_thread_cache();
  std::size_t passed = 0;  // blocks[0, passed): for the backend, small ones at their class size
  for (std::size_t i = 0; i < count; ++i) {
    const BlockToFree b = blocks[i];
    if (b.bytes > kMaxCachedBytes) {
      blocks[passed++] = b;
      continue;
    }
    std::size_t block = 0;
    if (!keep_small(cache, b.p, b.bytes, &block)) blocks[passed++] = {b.p, block, b.stream};
  }
  inner_->deallocate_batch(blocks, passed);
}

// Large blocks: a hit is a block of exactly the requested size in this thread's slots. A miss gives the
// thread's own slots back first, so the backend sees this thread's frees before its next request, in
// the program's order (on a KV cache grown by torch.cat, each request is a bit larger than the block
// just freed, which the arena merges with its neighbours to serve it). Then, while blocks may be parked
// in other threads, the backend is asked for memory it holds already; only if it has none are every
// thread's slots emptied into it before it may grow. So parked blocks never make the backend map more
// than it would without them (tests/thread_cache_allocator_test.cpp, "NoGrowth").
inline bool ThreadCacheAllocator::parks_large(const ThreadCache* cache) const noexcept {
  return large_slots_ == LargeSlots::always || cache->parking_large;
}

inline void ThreadCacheAllocator::note_large_backend_call(ThreadCache* cache, std::uint64_t waits_before) noexcept {
  if (large_slots_ != LargeSlots::while_contended || !cache) return;
  if (lock_waits() != waits_before) {
    cache->parking_large = true;
    cache->calm_large_calls = 0;
  } else if (cache->parking_large && ++cache->calm_large_calls >= kCalmCallsToStopParking) {
    cache->parking_large = false;  // its parked blocks went back at this miss (allocate_large)
  }
}

// The common case of LargeSlots::while_contended, a thread alone on the arena: no slot to search or
// empty, no taken size to forget; only the waits are counted around the call (the CPU guard's 4 MiB
// pair was +237 instructions through the general path, docs/perf-notes.md).
__attribute__((always_inline)) inline void* ThreadCacheAllocator::allocate_large_unparked(
    ThreadCache* cache, std::size_t bytes, StreamHandle stream) noexcept {
  const std::uint64_t waits_before = lock_waits();
  void* p = allocate_from_backend(bytes, stream);
  note_large_backend_call(cache, waits_before);
  return p;
}

__attribute__((noinline)) void* ThreadCacheAllocator::allocate_large(std::size_t bytes, StreamHandle stream) noexcept {
  if (large_slots_ == LargeSlots::never) return inner_->allocate(bytes, stream);
  ThreadCache* cache = this_thread_cache();
  if (cache && !parks_large(cache) && depot_large_blocks_.load(std::memory_order_relaxed) == 0) {
    cache->lock.owner_lock();
    const bool nothing_held = cache->large_count == 0 && cache->taken_count == 0;
    cache->lock.owner_unlock();
    if (nothing_held) return allocate_large_unparked(cache, bytes, stream);
  }
  bool taken_from_here = false;
  if (cache) {
    LargeSlot own[kLargeSlots];
    cache->lock.owner_lock();
    for (std::uint32_t i = cache->large_count; i-- > 0;) {
      if (cache->large[i].bytes != bytes) continue;
      void* p = cache->large[i].p;
      std::copy(cache->large + i + 1, cache->large + cache->large_count, cache->large + i);
      --cache->large_count;
      ThreadCache::drop(cache->large_bytes, bytes);
      ThreadCache::bump(cache->allocate_hits, 1);
      cache->lock.owner_unlock();
      return p;
    }
    taken_from_here = forget_taken_size(cache, bytes);
    const std::size_t n = take_large_slots(cache, own);
    cache->lock.owner_unlock();
    give_to_backend(own, n, cache);
  }
  if (depot_large_blocks_.load(std::memory_order_relaxed) != 0) {
    if (void* p = take_large_from_depot(bytes)) {
      depot_hits_.fetch_add(1, std::memory_order_relaxed);
      return p;
    }
  }
  const std::uint64_t waits_before = lock_waits();
  void* p = taken_from_here ? allocate_taken_size(bytes, stream) : allocate_from_backend(bytes, stream);
  note_large_backend_call(cache, waits_before);
  return p;
}

// A freed large block joins the thread's slots, the oldest leaving when the slots or their byte bound
// are full. Blocks above the bound pass through.
__attribute__((noinline)) void ThreadCacheAllocator::deallocate_large(void* p, std::size_t bytes,
                                                                      StreamHandle stream) noexcept {
  ThreadCache* cache =
      large_slots_ != LargeSlots::never && bytes <= kMaxLargeBytesPerThread ? this_thread_cache() : nullptr;
  if (!cache) return inner_->deallocate(p, bytes, stream);
  if (!parks_large(cache)) {
    const std::uint64_t waits_before = lock_waits();
    inner_->deallocate(p, bytes, stream);
    note_large_backend_call(cache, waits_before);
    return;
  }
  LargeSlot evicted[kLargeSlots];
  std::size_t n = 0;
  cache->lock.owner_lock();
  while (cache->large_count == kLargeSlots ||
         cache->large_bytes.load(std::memory_order_relaxed) + bytes > kMaxLargeBytesPerThread) {
    evicted[n++] = cache->large[0];
    ThreadCache::drop(cache->large_bytes, cache->large[0].bytes);
    std::copy(cache->large + 1, cache->large + cache->large_count, cache->large);
    --cache->large_count;
  }
  cache->large[cache->large_count++] = {p, bytes};
  ThreadCache::bump(cache->large_bytes, bytes);
  ThreadCache::bump(cache->deallocate_hits, 1);
  if (!cache->counted_with_large.load(std::memory_order_relaxed)) {
    cache->counted_with_large.store(true, std::memory_order_relaxed);
    caches_with_large_.fetch_add(1, std::memory_order_relaxed);
  }
  cache->lock.owner_unlock();
  give_to_backend(evicted, n, cache);
}

// In batches, so a backend with one lock takes it once for a thread's slots: one deallocate() each, a
// miss that gave back four blocks queued four times on the arena's lock, and 16 threads of mixed sizes
// with a stream each spent 21% of their wall-clock time in here (forty-third session, docs/perf-notes.md).
void ThreadCacheAllocator::give_to_backend(const LargeSlot* blocks, std::size_t count, ThreadCache* owner) noexcept {
  BlockToFree batch[kBlocksPerBatchCall];  // the depot may hold more than a thread's slots
  for (std::size_t done = 0; done < count;) {
    const std::size_t n = std::min(kBlocksPerBatchCall, count - done);
    for (std::size_t i = 0; i < n; ++i) batch[i] = {blocks[done + i].p, blocks[done + i].bytes, 0};
    inner_->deallocate_batch(batch, n);
    done += n;
  }
  if (count == 0) return;
  if (owner)
    ThreadCache::bump(owner->flushed, count);
  else
    flushed_.fetch_add(count, std::memory_order_relaxed);
}

void* ThreadCacheAllocator::take_large_from_depot(std::size_t bytes) noexcept {
  std::lock_guard<std::mutex> guard(depot_mutex_);
  for (auto it = depot_large_.begin(); it != depot_large_.end(); ++it) {
    if (it->bytes != bytes) continue;
    void* p = it->p;
    depot_large_.erase(it);
    depot_large_blocks_.fetch_sub(1, std::memory_order_relaxed);
    depot_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
    return p;
  }
  return nullptr;
}

// The blocks reach the backend while caches_mutex_ (and then depot_mutex_) is held: this runs only when
// the backend would otherwise grow or is out of memory, and holding the lock needs no list to allocate.
// Two shortcuts keep a burst of misses from queueing behind each other's walks (16 threads with a
// stream each on the H200: 21-28% of their wall-clock time waited here, at 4 and 16 MiB):
// - a miss (`flushes_seen` given) gives up its walk when a flush has ended since it asked the backend,
//   or is under way: those blocks reach the backend without it, and a walk costs a membarrier per
//   cache. The miss may then grow the backend by a block a flush returns a moment later;
// - a cache that parked nothing since the last flush is not locked (its owner parking one meanwhile is as
//   if after the flush). One that parked and emptied its slots since is: the walk uncounts it from
//   caches_with_large_, else every later miss of every thread would ask the backend twice. (Skipping
//   every empty cache did that: four threads fighting over the arena then asked it 2-3 times a pair
//   on a loaded 2-core machine, tests/thread_cache_allocator_test.cpp.)
void ThreadCacheAllocator::flush_large_everywhere(bool remember_taken, std::uint64_t flushes_seen) noexcept {
  {
    std::unique_lock<AdaptiveMutex> guard(caches_mutex_, std::defer_lock);
    if (flushes_seen == kAnyFlushes) {
      guard.lock();
    } else if (large_flushes_.load(std::memory_order_acquire) != flushes_seen || !guard.try_lock() ||
               large_flushes_.load(std::memory_order_relaxed) != flushes_seen) {
      return;
    }
    for (ThreadCache* cache : caches_) {
      if (!cache->counted_with_large.load(std::memory_order_relaxed)) continue;
      LargeSlot taken[kLargeSlots];
      cache->lock.remote_lock();
      const std::size_t n = take_large_slots(cache, taken);
      uncount_large(cache, caches_with_large_);
      if (remember_taken) {
        for (std::size_t i = 0; i < n; ++i) cache->taken_sizes[i] = taken[i].bytes;
        cache->taken_count = static_cast<std::uint32_t>(n);
      }
      cache->lock.remote_unlock();
      give_to_backend(taken, n);
    }
    large_flushes_.fetch_add(1, std::memory_order_release);
  }
  std::lock_guard<std::mutex> guard(depot_mutex_);
  give_to_backend(depot_large_.data(), depot_large_.size());
  for (const LargeSlot& block : depot_large_) depot_bytes_.fetch_sub(block.bytes, std::memory_order_relaxed);
  depot_large_blocks_.fetch_sub(depot_large_.size(), std::memory_order_relaxed);
  depot_large_.clear();
}

std::size_t ThreadCacheAllocator::take_from_depot(std::size_t c, void** out, std::size_t count) noexcept {
  if (depot_blocks_.load(std::memory_order_relaxed) == 0 || depot_.size() != kClassCount) return 0;
  std::lock_guard<std::mutex> guard(depot_mutex_);
  std::vector<void*>& blocks = depot_[c];
  const std::size_t taken = std::min(count, blocks.size());
  std::copy(blocks.end() - static_cast<std::ptrdiff_t>(taken), blocks.end(), out);
  blocks.resize(blocks.size() - taken);
  depot_blocks_.fetch_sub(taken, std::memory_order_relaxed);
  depot_bytes_.fetch_sub(taken * class_size(c), std::memory_order_relaxed);
  return taken;
}

void ThreadCacheAllocator::retire(ThreadCache* cache) noexcept {
  {
    std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
    caches_.erase(std::remove(caches_.begin(), caches_.end(), cache), caches_.end());
  }
  // No other thread can reach the cache now (release_cached walks caches_ under caches_mutex_).
  std::lock_guard<std::mutex> guard(depot_mutex_);
  LargeSlot large[kLargeSlots];
  const std::size_t large_count = take_large_slots(cache, large);
  uncount_large(cache, caches_with_large_);
  for (std::size_t i = 0; i < large_count; ++i) {
    try {
      depot_large_.push_back(large[i]);
    } catch (...) {
      give_to_backend(&large[i], 1);  // no host memory for the depot: the backend takes it now
      continue;
    }
    depot_large_blocks_.fetch_add(1, std::memory_order_relaxed);
    depot_bytes_.fetch_add(large[i].bytes, std::memory_order_relaxed);
  }
  for (std::size_t c = 0; c < kClassCount; ++c) {
    for (std::uint32_t i = 0; i < cache->count[c]; ++i) {
      void* p = cache->slots[first_slot_[c] + i];
      try {
        depot_.at(c).push_back(p);
      } catch (...) {
        inner_->deallocate(p, class_size(c), 0);  // no host memory for the depot: the backend takes it now
        flushed_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      depot_blocks_.fetch_add(1, std::memory_order_relaxed);
      depot_bytes_.fetch_add(class_size(c), std::memory_order_relaxed);
    }
  }
  retired_allocate_hits_.fetch_add(cache->allocate_hits.load(std::memory_order_relaxed), std::memory_order_relaxed);
  retired_deallocate_hits_.fetch_add(cache->deallocate_hits.load(std::memory_order_relaxed),
                                     std::memory_order_relaxed);
  flushed_.fetch_add(cache->flushed.load(std::memory_order_relaxed), std::memory_order_relaxed);
  untracked_rounding_.fetch_add(cache->rounding.load(std::memory_order_relaxed), std::memory_order_relaxed);
  delete cache;
}

bool ThreadCacheAllocator::release_due_with(std::uint64_t held_in_front) noexcept {
  // Read without the caches' locks: a count an owner changes meanwhile is as if read before or after.
  std::uint64_t kept = depot_bytes_.load(std::memory_order_relaxed);
  {
    std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
    for (const ThreadCache* cache : caches_)
      kept += cache->cached_bytes.load(std::memory_order_relaxed) + cache->large_bytes.load(std::memory_order_relaxed);
  }
  return inner_->release_due_with(held_in_front + kept);
}

void ThreadCacheAllocator::hand_in_kept_blocks() noexcept {
  give_back_every_cached_block();
  inner_->hand_in_kept_blocks();
}

std::size_t ThreadCacheAllocator::release_cached() noexcept {
  give_back_every_cached_block();
  return inner_->release_cached();
}

void ThreadCacheAllocator::give_back_every_cached_block() noexcept {
  flush_large_everywhere(/*remember_taken=*/false);
  // Blocks leave the caches under each cache's lock and reach the backend with no lock of ours held.
  std::vector<std::pair<void*, std::size_t>> blocks;
  {
    std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
    for (ThreadCache* cache : caches_) {
      // An empty cache costs no remote lock: a block its owner caches meanwhile is as if after this walk.
      if (cache->cached_bytes.load(std::memory_order_relaxed) == 0) continue;
      cache->lock.remote_lock();
      for (std::size_t c = 0; c < kClassCount; ++c) {
        std::uint32_t& n = cache->count[c];
        for (; n > 0; --n) {
          try {
            blocks.emplace_back(cache->slots[first_slot_[c] + n - 1], class_size(c));
          } catch (...) {
            break;  // no host memory for the list: the rest stays cached
          }
          ThreadCache::drop(cache->cached_bytes, class_size(c));
        }
      }
      cache->lock.remote_unlock();
    }
  }
  {
    std::lock_guard<std::mutex> guard(depot_mutex_);
    for (std::size_t c = 0; c < depot_.size(); ++c) {
      std::vector<void*>& list = depot_[c];
      while (!list.empty()) {
        try {
          blocks.emplace_back(list.back(), class_size(c));
        } catch (...) {
          break;
        }
        list.pop_back();
        depot_blocks_.fetch_sub(1, std::memory_order_relaxed);
        depot_bytes_.fetch_sub(class_size(c), std::memory_order_relaxed);
      }
    }
  }
  for (const auto& [p, bytes] : blocks) inner_->deallocate(p, bytes, 0);
  flushed_.fetch_add(blocks.size(), std::memory_order_relaxed);
}

void ThreadCacheAllocator::reset_locks_after_fork() noexcept {
  new (&caches_mutex_) AdaptiveMutex();
  new (&depot_mutex_) std::mutex();
  for (ThreadCache* cache : caches_) cache->lock.reset_after_fork();
}

std::size_t ThreadCacheAllocator::cached_blocks() const noexcept {
  std::size_t blocks = depot_blocks_.load(std::memory_order_relaxed);
  {
    std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
    for (ThreadCache* cache : caches_) {
      cache->lock.remote_lock();
      for (std::size_t c = 0; c < kClassCount; ++c) blocks += cache->count[c];
      cache->lock.remote_unlock();
    }
  }
  return blocks + cached_large_blocks();
}

std::size_t ThreadCacheAllocator::cached_large_blocks() const noexcept {
  std::size_t blocks = depot_large_blocks_.load(std::memory_order_relaxed);
  std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
  for (ThreadCache* cache : caches_) {
    cache->lock.remote_lock();
    blocks += cache->large_count;
    cache->lock.remote_unlock();
  }
  return blocks;
}

AllocatorStats ThreadCacheAllocator::stats() const noexcept {
  // The backend counts cached blocks as in use, at their class size: take both out.
  AllocatorStats s = inner_->stats();
  std::uint64_t cached = depot_bytes_.load(std::memory_order_relaxed);
  std::uint64_t allocate_hits = retired_allocate_hits_.load(std::memory_order_relaxed) +
                                depot_hits_.load(std::memory_order_relaxed);
  std::uint64_t deallocate_hits = retired_deallocate_hits_.load(std::memory_order_relaxed);
  std::uint64_t flushed = flushed_.load(std::memory_order_relaxed);
  std::uint64_t rounding = untracked_rounding_.load(std::memory_order_relaxed);
  {
    std::lock_guard<AdaptiveMutex> guard(caches_mutex_);
    for (const ThreadCache* cache : caches_) {
      cached += cache->cached_bytes.load(std::memory_order_relaxed);
      cached += cache->large_bytes.load(std::memory_order_relaxed);
      allocate_hits += cache->allocate_hits.load(std::memory_order_relaxed);
      deallocate_hits += cache->deallocate_hits.load(std::memory_order_relaxed);
      flushed += cache->flushed.load(std::memory_order_relaxed);
      rounding += cache->rounding.load(std::memory_order_relaxed);
    }
  }
  // Counters are read one after another while other threads run: a sum may be briefly off, never below 0.
  if (static_cast<std::int64_t>(rounding) < 0) rounding = 0;
  const std::uint64_t live_class_bytes = s.bytes_in_use - std::min(s.bytes_in_use, cached);
  rounding = std::min(rounding, live_class_bytes);
  // The backend's own waste covers live and cached blocks alike; the live blocks' share of it is
  // estimated by bytes (exact where the backend does not round class sizes further, as the vmm arena).
  const std::uint64_t backend_waste =
      s.bytes_in_use == 0 ? 0
                          : static_cast<std::uint64_t>(static_cast<double>(s.internal_waste) *
                                                       static_cast<double>(live_class_bytes) /
                                                       static_cast<double>(s.bytes_in_use));
  s.failed_allocations -= std::min(s.failed_allocations, recovered_failures_.load(std::memory_order_relaxed));
  s.allocations += allocate_hits;
  s.deallocations += deallocate_hits;
  s.deallocations -= std::min(s.deallocations, flushed);
  s.bytes_in_use = live_class_bytes - rounding;
  // The rest of the backend's waste sits in cached blocks: cached memory too.
  s.bytes_cached += cached + (s.internal_waste - std::min(s.internal_waste, backend_waste));
  s.internal_waste = backend_waste + rounding;
  return s;
}

}  // namespace gpushim
