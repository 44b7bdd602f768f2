#include "allocators/arena_shards.h"

#include <algorithm>
#include <new>

#include "allocators/growth_policy.h"

namespace gpushim {

namespace {

std::atomic<std::uint64_t> g_next_serial{1};

VmmArenaOptions with_totals(VmmArenaOptions options, VmmArenaTotals* totals) noexcept {
  options.totals = totals;
  return options;
}

}  // namespace

// Which arena the calling thread allocates from, per ArenaShards (a thread may use a few devices).
struct ArenaShards::ThreadEntry {
  std::uint64_t serial;
  std::uint32_t arena;            // 0: the home
  std::uint32_t waits;            // waited home allocations in a row, of changing sizes, kWaitGapNs apart at most
  std::uint64_t last_wait_end_ns;  // when the last of those returned
  std::size_t last_bytes;          // the size of the thread's last allocation from the home that waited
};

namespace {
constexpr std::size_t kThreadEntries = 4;  // a power of two: an instance's entry is at serial % 4
// initial-exec: read on every arena call, so no __tls_get_addr call.
thread_local ArenaShards::ThreadEntry t_entries[kThreadEntries] __attribute__((tls_model("initial-exec"))) = {};
}  // namespace

ArenaShards::ArenaShards(MemoryProvider& provider, const VmmArenaOptions& options, std::size_t shards,
                         std::uint32_t waits_to_leave, std::uint64_t wait_gap_ns, std::uint64_t home_quiet_ns) noexcept
    : provider_(provider),
      options_(with_totals(options, &totals_)),
      shards_(std::clamp<std::size_t>(shards, 1, kMaxShards)),
      waits_to_leave_(waits_to_leave),
      wait_gap_ns_(wait_gap_ns),
      home_quiet_ns_(home_quiet_ns),
      serial_(g_next_serial.fetch_add(1, std::memory_order_relaxed)) {
  owned_[0].reset(new (std::nothrow) VmmArena(provider_, options_));
  created_.store(owned_[0] ? 1 : 0, std::memory_order_release);
}

// The arenas go first (each unmaps its memory and counts it out of totals_), in the reverse order.
ArenaShards::~ArenaShards() {
  for (std::size_t i = kMaxShards; i-- > 0;) owned_[i].reset();
}

// One slot per instance (two instances whose serials share a slot evict each other's entry: the thread
// starts at the home again, which costs placement, never correctness).
__attribute__((always_inline)) inline ArenaShards::ThreadEntry& ArenaShards::this_thread() noexcept {
  ThreadEntry& entry = t_entries[serial_ % kThreadEntries];
  if (__builtin_expect(entry.serial != serial_, false)) entry = ThreadEntry{serial_, 0, 0, 0, 0};
  return entry;
}

std::size_t ArenaShards::arena_of_this_thread() noexcept { return this_thread().arena; }

int ArenaShards::arena_holding(const void* p) const noexcept {
  const std::size_t count = created_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i)
    if (const VmmArena* a = arena(i); a && a->contains(p)) return static_cast<int>(i);
  return -1;
}

VmmArena* ArenaShards::make_arena() noexcept {
  std::lock_guard<std::mutex> guard(make_mutex_);
  const std::size_t count = created_.load(std::memory_order_relaxed);
  if (make_failed_ || count >= shards_) return nullptr;
  std::unique_ptr<VmmArena> made(new (std::nothrow) VmmArena(provider_, options_));
  if (!made || made->reserved_bytes() == 0) {
    make_failed_ = true;  // the provider refused the address space: the threads stay where they are
    return nullptr;
  }
  owned_[count] = std::move(made);
  created_.store(count + 1, std::memory_order_release);
  return owned_[count].get();
}

// A home thread's allocation found the lock held: a thread whose allocations keep doing so, each of
// another size than the last that waited, leaves for an arena of its own (made when first taken; they
// are handed out in turn). One of the same size ends the row (arena_shards.h says why). Here, not on
// every call, so that a call that found the lock free pays nothing for the sizes; the clock too is read
// only on calls that waited (a vDSO call, no system call).
void ArenaShards::note_home_wait(ThreadEntry& entry, std::size_t bytes) noexcept {
  const std::uint64_t began = detail::t_vmm_wait_began_ns;
  detail::t_vmm_wait_began_ns = 0;
  const bool same_size = bytes == entry.last_bytes;
  entry.last_bytes = bytes;
  if (same_size && waits_to_leave_ != 0) {
    entry.waits = 0;
    return;
  }
  if (entry.waits != 0 && began - entry.last_wait_end_ns > wait_gap_ns_) entry.waits = 0;
  entry.last_wait_end_ns = monotonic_ns();
  if (++entry.waits < waits_to_leave_) return;
  entry.waits = 0;
  if (shards_ < 2) return;
  const std::size_t target = 1 + next_.fetch_add(1, std::memory_order_relaxed) % (shards_ - 1);
  while (created_.load(std::memory_order_acquire) <= target)
    if (!make_arena()) return;  // stays home
  entry.arena = static_cast<std::uint32_t>(target);
  // It allocated at home until now: the quiet starts here (its first frees would find nothing counted yet).
  home_quiet_since_ns_.store(monotonic_ns(), std::memory_order_relaxed);
}

bool ArenaShards::home_is_quiet() noexcept {
  const std::uint64_t allocations = home_thread_allocations_.load(std::memory_order_relaxed);
  const std::uint64_t now = monotonic_ns();
  if (allocations != home_allocations_seen_.load(std::memory_order_relaxed)) {  // the quiet starts again
    home_allocations_seen_.store(allocations, std::memory_order_relaxed);
    home_quiet_since_ns_.store(now, std::memory_order_relaxed);
  }
  return now - home_quiet_since_ns_.load(std::memory_order_relaxed) >= home_quiet_ns_;
}

// A fit in arena `own`, then in every other (the home first): idle memory anywhere serves before any
// arena grows. Then growth of `own`, which a NoNewPeakScope refuses past the device's peak (the arenas
// count their mapped memory together). Last, before failing, growth of the others (own's reservation
// may be too small for the block, or its provider may have refused).
//
// One growth at a time for the whole device (grow_mutex_), as a lone arena grows (its own grow mutex,
// allocators/vmm_arena.cpp), and a thread that waited for it looks in every arena again first: blocks
// freed meanwhile (with a stream, those whose fences completed) serve it rather than a growth of its own.
// Arenas growing side by side reserved twice one arena's peak with 16 threads and a stream each at 16
// MiB on the H200 (5.1 -> 10.1-10.6 GiB); one grower brought it to 9.1-9.4 GiB, not back to one arena's
// (docs/perf-notes.md, twenty-first session).
void* ArenaShards::allocate_from(std::size_t own, std::size_t bytes, StreamHandle stream) noexcept {
  VmmArena* mine = arena(own);
  if (void* p = fit_anywhere(own, bytes, stream)) return p;
  // Under a NoNewPeakScope no arena grows past the device's peak: the ask is answered without waiting
  // for a grower (the arena's hint answers most of them without its lock).
  if (new_peak_refused()) return mine->allocate(bytes, stream);
  const std::lock_guard<std::mutex> one_grower(grow_mutex_);
  if (void* p = fit_anywhere(own, bytes, stream)) return p;
  if (void* p = mine->allocate(bytes, stream)) return p;
  const std::size_t count = created_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i)
    if (i != own)
      if (void* p = arena(i)->allocate(bytes, stream)) return p;
  return nullptr;
}

void* ArenaShards::fit_anywhere(std::size_t own, std::size_t bytes, StreamHandle stream) noexcept {
  if (void* p = arena(own)->allocate_without_growing(bytes, stream)) return p;
  const std::size_t count = created_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i)
    if (i != own)
      if (void* p = arena(i)->allocate_without_growing(bytes, stream)) return p;
  return nullptr;
}

// A free's wait never counts: deallocate() clears it.
inline void ArenaShards::after_home_allocation(ThreadEntry& entry, std::size_t bytes) noexcept {
  if (__builtin_expect(detail::t_vmm_wait_began_ns != 0 || waits_to_leave_ == 0, false))
    note_home_wait(entry, bytes);
}

void* ArenaShards::allocate(std::size_t bytes, StreamHandle stream) noexcept {
  ThreadEntry& entry = this_thread();
  const std::size_t own = entry.arena;
  if (own != 0) return allocate_from(own, bytes, stream);
  const std::size_t count = created_.load(std::memory_order_acquire);
  if (count == 0) return nullptr;  // no host memory for the home
  // From the home: while it is the only arena, exactly as a lone VmmArena.
  void* p;
  if (count == 1) {
    p = arena(0)->allocate(bytes, stream);
  } else {
    note_home_thread_allocation();
    p = allocate_from(0, bytes, stream);
  }
  after_home_allocation(entry, bytes);
  return p;
}

void* ArenaShards::allocate_without_growing(std::size_t bytes, StreamHandle stream) noexcept {
  if (created_.load(std::memory_order_acquire) == 0) return nullptr;
  ThreadEntry& entry = this_thread();
  const std::size_t own = entry.arena;
  if (own == 0 && created_.load(std::memory_order_relaxed) > 1) note_home_thread_allocation();
  void* p = fit_anywhere(own, bytes, stream);
  if (own == 0) after_home_allocation(entry, bytes);
  return p;
}

// A thread that left gives back the chunks a home block leaves free, once the home is quiet
// (kHomeQuietNs says why). The arena's entry first: a home thread's free reads no clock.
inline bool ArenaShards::frees_drain_home() noexcept { return this_thread().arena != 0 && home_is_quiet(); }

void ArenaShards::deallocate(void* p, std::size_t bytes, StreamHandle stream) noexcept {
  VmmArena* const home = arena(0);
  if (__builtin_expect(home && home->contains(p), true)) {
    if (__builtin_expect(frees_drain_home(), false)) {
      BlockToFree block{p, bytes, stream};
      home->deallocate_giving_back(&block, 1);
    } else {
      home->deallocate(p, bytes, stream);
    }
  } else if (const int holder = arena_holding(p); holder > 0) {
    arena(static_cast<std::size_t>(holder))->deallocate(p, bytes, stream);
  }
  // else: the router validates ownership; nothing sane to do with a stranger here
  detail::t_vmm_wait_began_ns = 0;  // a free's wait never counts (after_home_allocation)
}

void ArenaShards::deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept {
  BlockToFree* rest = blocks;
  BlockToFree* const end = blocks + count;
  const std::size_t arenas = created_.load(std::memory_order_acquire);
  // The home's blocks first, then each other arena's: a partition of what is left, in place.
  for (std::size_t i = 0; i < arenas && rest != end; ++i) {
    VmmArena* const a = arena(i);
    BlockToFree* const others = std::partition(rest, end, [a](const BlockToFree& b) { return a->contains(b.p); });
    const std::size_t n = static_cast<std::size_t>(others - rest);
    if (n != 0 && i == 0 && frees_drain_home())
      a->deallocate_giving_back(rest, n);  // as deallocate()
    else if (n != 0)
      a->deallocate_batch(rest, n);
    rest = others;
  }
  // Blocks no arena holds are left: the router validates ownership, as for deallocate().
  detail::t_vmm_wait_began_ns = 0;  // as deallocate()
}

std::size_t ArenaShards::release_cached() noexcept {
  std::size_t released = 0;
  const std::size_t count = created_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i) released += arena(i)->release_cached();
  return released;
}

void ArenaShards::release_idle() noexcept {
  const std::size_t count = created_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i) arena(i)->release_idle();
}

bool ArenaShards::release_due_with(std::uint64_t held_in_front) noexcept {
  const std::size_t count = created_.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < count; ++i)
    if (arena(i)->release_due_with(held_in_front)) return true;
  return false;
}

AllocatorStats ArenaShards::stats() const noexcept {
  const std::size_t count = created_.load(std::memory_order_acquire);
  if (count == 0) return {};
  if (count == 1) return arena(0)->stats();
  AllocatorStats s;
  for (std::size_t i = 0; i < count; ++i) {
    const AllocatorStats a = arena(i)->stats();
    s.allocations += a.allocations;
    s.deallocations += a.deallocations;
    s.failed_allocations += a.failed_allocations;
    s.bytes_in_use += a.bytes_in_use;
    s.peak_bytes_in_use += a.peak_bytes_in_use;
    s.bytes_cached += a.bytes_cached;
    s.internal_waste += a.internal_waste;
    s.largest_free_block = std::max(s.largest_free_block, a.largest_free_block);
  }
  s.peak_bytes_in_use = std::max(s.peak_bytes_in_use, s.bytes_in_use);
  s.bytes_reserved = totals_.mapped.load(std::memory_order_relaxed);
  s.peak_bytes_reserved = totals_.peak_mapped.load(std::memory_order_relaxed);
  return s;
}

std::unique_ptr<Allocator> make_vmm_arena(MemoryProvider& provider, const Settings& settings) {
  const VmmArenaOptions options = VmmArenaOptions::from(settings);
  const int shards = settings.arena_shards ? settings.arena_shards : kDefaultArenaShards;
  if (shards > 1)
    return std::unique_ptr<Allocator>(new (std::nothrow) ArenaShards(provider, options, static_cast<std::size_t>(shards)));
  return std::unique_ptr<Allocator>(new (std::nothrow) VmmArena(provider, options));
}

}  // namespace gpushim
