#include "allocators/vmm_arena.h"

#include <algorithm>
#include <limits>
#include <new>
#include <optional>

#include "allocators/growth_policy.h"
#include "allocators/raise_peak.h"

namespace gpushim {

// mapping: claimed from unmapped space by a growth whose provider calls run outside the lock
// (allocate_growing); neither free nor in any list until it ends.
enum class RangeState : std::uint8_t { free, live, unmapped, mapping };

// One node per range. Ranges tile the reservation in address order (prev/next), so a neighbour is
// always address-adjacent and coalescing needs no search. Device memory cannot hold boundary tags, so
// the tags live here, off to the side.
struct VmmArena::Range {
  std::uintptr_t start = 0;
  std::size_t size = 0;
  Range* prev = nullptr;        // address order
  Range* next = nullptr;
  Range* list_prev = nullptr;   // free: its bin; unmapped: the unmapped list; pool: spare list
  Range* list_next = nullptr;
  Range* hash_next = nullptr;   // live: hash chain
  std::size_t requested = 0;    // live: bytes the caller asked for
  RangeState state = RangeState::unmapped;
  bool wilderness = false;      // free: it lies right below unmapped space, so it is in wilderness_, not a bin
  std::uint8_t first_level = 0;
  std::uint8_t second_level = 0;
};

namespace {

constexpr std::size_t kBlockShift = 9;  // blocks are multiples of kMinAlignment (512 B)
static_assert(kMinAlignment == (std::size_t{1} << kBlockShift));
// Address space beyond 128 TiB is not there on x86-64 hosts nor useful on the GPU.
constexpr std::size_t kLargestReservation = std::size_t{1} << 47;
// Ranges examined per bin when looking for the smallest fit: bounds the time of one allocation when a
// bin holds many ranges; a range missed here only means the next bin up (within 1/32 in size) is used.
constexpr int kBinScanLimit = 8;
constexpr std::size_t kRangesPerPoolBlock = 1024;
constexpr int kInitialBucketBits = 12;  // 4096 buckets, 32 KiB: enough for typical live counts

std::size_t round_up(std::size_t value, std::size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

struct BinIndex {
  int first;
  int second;
};

// TLSF mapping: sizes below 32 blocks get one bin per size; above, each power of two is split in 32.
BinIndex bin_of(std::size_t bytes) {
  std::size_t units = bytes >> kBlockShift;
  if (units < (std::size_t{1} << 5)) return {0, static_cast<int>(units)};
  int msb = 63 - __builtin_clzll(units);
  return {msb - 4, static_cast<int>((units >> (msb - 5)) - 32)};
}

std::uint64_t hash_address(std::uintptr_t start, int bits) {
  return ((start >> kBlockShift) * 0x9E3779B97F4A7C15ull) >> (64 - bits);
}

}  // namespace

VmmArenaOptions VmmArenaOptions::from(const Settings& settings) noexcept {
  VmmArenaOptions options;
  if (settings.vmm_reserve) options.reserve = settings.vmm_reserve;
  if (settings.vmm_grow_step) options.grow_step = settings.vmm_grow_step;
  options.release_threshold = settings.vmm_release_threshold;
  options.release_delay_ns = settings.vmm_release_delay_ns;
  return options;
}

VmmArena::VmmArena(MemoryProvider& provider, const VmmArenaOptions& options) noexcept
    : provider_(provider),
      granularity_(provider.granularity()),
      grow_step_(round_up(std::max(options.grow_step, granularity_), granularity_)),
      release_threshold_(options.release_threshold),
      release_delay_ns_(options.release_delay_ns),
      // Without a delay, everything above the threshold; with one, what it may keep is bounded.
      prompt_release_above_(options.release_delay_ns == 0               ? options.release_threshold
                            : options.release_threshold > SIZE_MAX / 2 ? SIZE_MAX
                                                                        : 2 * options.release_threshold),
      totals_(options.totals ? options.totals : &own_totals_),
      stamps_waits_(options.totals != nullptr) {
  std::size_t want = round_up(std::min(std::max(options.reserve, granularity_), kLargestReservation),
                              granularity_);
  // A provider may refuse a huge reservation (a host with a small address-space limit): halve until one
  // is granted, but never below one growth step.
  while (want >= granularity_) {
    if (void* base = provider_.reserve(want)) {
      base_ = reinterpret_cast<std::uintptr_t>(base);
      reserve_bytes_ = want;
      break;
    }
    if (want <= grow_step_) break;
    want = round_up(want / 2, granularity_);
  }
  buckets_.reset(new (std::nothrow) Range*[std::size_t{1} << kInitialBucketBits]());
  if (buckets_) bucket_bits_ = kInitialBucketBits;
  if (reserve_bytes_ == 0 || !buckets_) return;
  Range* all = new_range();
  if (!all) return;
  all->start = base_;
  all->size = reserve_bytes_;
  head_ = all;
  insert_unmapped(all);
}

VmmArena::~VmmArena() {
  std::lock_guard<AdaptiveMutex> lock(mutex_);
  for (const auto& [start, bytes] : chunks_) provider_.unmap(reinterpret_cast<void*>(start), bytes);
  chunks_.clear();
  count_unmapped(mapped_);
  if (reserve_bytes_) provider_.release_reservation(reinterpret_cast<void*>(base_), reserve_bytes_);
}

// ---- node pool ----

VmmArena::Range* VmmArena::new_range() noexcept {
  if (!spare_) {
    std::unique_ptr<Range[]> block(new (std::nothrow) Range[kRangesPerPoolBlock]);
    if (!block) return nullptr;
    try {
      range_blocks_.push_back(nullptr);
    } catch (...) {
      return nullptr;
    }
    for (std::size_t i = 0; i < kRangesPerPoolBlock; ++i) {
      block[i].list_next = spare_;
      spare_ = &block[i];
    }
    range_blocks_.back() = std::move(block);
  }
  Range* r = spare_;
  spare_ = r->list_next;
  *r = Range{};
  return r;
}

void VmmArena::recycle(Range* r) noexcept {
  r->list_next = spare_;
  spare_ = r;
}

// ---- free ranges by size ----

void VmmArena::insert_free(Range* r) noexcept {
  r->state = RangeState::free;
  r->wilderness = r->next && r->next->state == RangeState::unmapped;
  if (r->wilderness) {
    r->list_prev = nullptr;
    r->list_next = wilderness_;
    if (wilderness_) wilderness_->list_prev = r;
    wilderness_ = r;
    return;
  }
  BinIndex bin = bin_of(r->size);
  r->first_level = static_cast<std::uint8_t>(bin.first);
  r->second_level = static_cast<std::uint8_t>(bin.second);
  Range*& head = bins_[bin.first][bin.second];
  r->list_prev = nullptr;
  r->list_next = head;
  if (head) head->list_prev = r;
  head = r;
  first_level_map_ |= std::uint64_t{1} << bin.first;
  second_level_map_[bin.first] |= std::uint32_t{1} << bin.second;
}

void VmmArena::remove_free(Range* r) noexcept {
  if (r->wilderness) {
    if (r->list_prev) r->list_prev->list_next = r->list_next;
    else wilderness_ = r->list_next;
    if (r->list_next) r->list_next->list_prev = r->list_prev;
    r->list_prev = r->list_next = nullptr;
    r->wilderness = false;
    return;
  }
  Range*& head = bins_[r->first_level][r->second_level];
  if (r->list_prev) r->list_prev->list_next = r->list_next;
  else head = r->list_next;
  if (r->list_next) r->list_next->list_prev = r->list_prev;
  r->list_prev = r->list_next = nullptr;
  if (!head) {
    second_level_map_[r->first_level] &= ~(std::uint32_t{1} << r->second_level);
    if (!second_level_map_[r->first_level]) first_level_map_ &= ~(std::uint64_t{1} << r->first_level);
  }
}

VmmArena::Range* VmmArena::smallest_fitting(Range* head, std::size_t block, int limit) const noexcept {
  Range* best = nullptr;
  int seen = 0;
  for (Range* r = head; r && seen < limit; r = r->list_next, ++seen) {
    if (r->size >= block && (!best || r->size < best->size)) {
      best = r;
      if (r->size == block) break;
    }
  }
  return best;
}

VmmArena::Range* VmmArena::find_fit(std::size_t block, int scan_limit) const noexcept {
  BinIndex bin = bin_of(block);
  // The request's own bin may hold ranges both smaller and larger than the request.
  if (Range* r = smallest_fitting(bins_[bin.first][bin.second], block, scan_limit)) return r;
  // Every range in a higher bin fits; the lowest non-empty one holds the best fits.
  std::uint64_t second = bin.second + 1 < kSecondLevels
                             ? second_level_map_[bin.first] & (~std::uint32_t{0} << (bin.second + 1))
                             : 0;
  int first = bin.first;
  if (!second) {
    std::uint64_t firsts = bin.first + 1 < 64 ? first_level_map_ & (~std::uint64_t{0} << (bin.first + 1)) : 0;
    if (!firsts) return nullptr;
    first = __builtin_ctzll(firsts);
    second = second_level_map_[first];
  }
  return smallest_fitting(bins_[first][__builtin_ctzll(second)], block, scan_limit);
}

VmmArena::Range* VmmArena::wilderness_fit(std::size_t block) const noexcept {
  Range* best = nullptr;
  for (Range* r = wilderness_; r; r = r->list_next)
    if (r->size >= block && (!best || r->size < best->size || (r->size == best->size && r->start < best->start)))
      best = r;
  return best;
}

// ---- live blocks by address ----

void VmmArena::hash_insert(Range* r) noexcept {
  Range*& bucket = buckets_[hash_address(r->start, bucket_bits_)];
  r->hash_next = bucket;
  bucket = r;
  ++live_count_;
  maybe_grow_hash();
}

VmmArena::Range* VmmArena::hash_remove(std::uintptr_t start) noexcept {
  Range** link = &buckets_[hash_address(start, bucket_bits_)];
  for (Range* r = *link; r; link = &r->hash_next, r = r->hash_next) {
    if (r->start == start) {
      *link = r->hash_next;
      r->hash_next = nullptr;
      --live_count_;
      return r;
    }
  }
  return nullptr;
}

void VmmArena::maybe_grow_hash() noexcept {
  // Keep chains short (load factor <= 1). Doubling is amortized; if memory is short, chains just grow.
  std::size_t buckets = std::size_t{1} << bucket_bits_;
  if (live_count_ <= buckets || bucket_bits_ >= 40) return;
  int bits = bucket_bits_ + 1;
  std::unique_ptr<Range*[]> grown(new (std::nothrow) Range*[std::size_t{1} << bits]());
  if (!grown) return;
  for (std::size_t i = 0; i < buckets; ++i) {
    for (Range* r = buckets_[i]; r;) {
      Range* next = r->hash_next;
      Range*& bucket = grown[hash_address(r->start, bits)];
      r->hash_next = bucket;
      bucket = r;
      r = next;
    }
  }
  buckets_ = std::move(grown);
  bucket_bits_ = bits;
}

// ---- unmapped ranges and address order ----

void VmmArena::insert_unmapped(Range* r) noexcept {
  r->state = RangeState::unmapped;
  r->list_prev = nullptr;
  r->list_next = unmapped_;
  if (unmapped_) unmapped_->list_prev = r;
  unmapped_ = r;
}

void VmmArena::remove_unmapped(Range* r) noexcept {
  if (r->list_prev) r->list_prev->list_next = r->list_next;
  else unmapped_ = r->list_next;
  if (r->list_next) r->list_next->list_prev = r->list_prev;
  r->list_prev = r->list_next = nullptr;
}

void VmmArena::link_before(Range* r, Range* next) noexcept {
  r->next = next;
  r->prev = next->prev;
  if (next->prev) next->prev->next = r;
  else head_ = r;
  next->prev = r;
}

void VmmArena::unlink(Range* r) noexcept {
  if (r->prev) r->prev->next = r->next;
  else head_ = r->next;
  if (r->next) r->next->prev = r->prev;
}

VmmArena::Range* VmmArena::merge_free_neighbours(Range* r) noexcept {
  if (Range* prev = r->prev; prev && prev->state == RangeState::free) {
    remove_free(prev);
    prev->size += r->size;
    unlink(r);
    recycle(r);
    r = prev;
  }
  if (Range* next = r->next; next && next->state == RangeState::free) {
    remove_free(next);
    r->size += next->size;
    unlink(next);
    recycle(next);
  }
  return r;
}

// ---- the hot path ----

// A split undone. A program that allocates a large block and frees it again, over and over (a
// temporary buffer per step, alloc_bench's pairs above the thread caches' classes), had the arena merge
// the freed block with its free neighbours and, at the next request, find the merged range again and
// split the same block off it: ~260 of the ~1,100 instructions of a 4 MiB pair (callgrind, the CPU
// guard). So a block freed by the call right after the one that carved it stays as it is, counted free
// (freed_unmerged_). If the next call asks for a block of exactly its size, it goes out again as it is:
// the arena is then in the very state that carve left it in, a state its own best fit chose. Any other
// call merges it first (merge_deferred_free), so it finds every free range as a free always left it, and
// merging is order-free: the ranges come out as if the block had been merged at its free. A free that
// may give memory back merges at once (release_may_be_due). One that only leaves more than the release
// threshold cached waits like the rest: after 16 threads had held 16 GiB, one thread's 1 GiB pairs kept
// the arena above its 8 GiB threshold for the whole release delay, and each free merged and each
// allocation split again (the CPU guard's 4 MiB pair above the threshold: 1,057 instructions, 670 below).
void VmmArena::merge_deferred_free() noexcept {
  just_carved_ = nullptr;
  Range* r = freed_unmerged_;
  if (__builtin_expect(r == nullptr, 1)) return;
  freed_unmerged_ = nullptr;
  hash_remove(r->start);
  r->state = RangeState::free;
  insert_free(merge_free_neighbours(r));
}

// Inline into its callers: the hot path pays no extra call for the split (callgrind).
__attribute__((always_inline)) inline void* VmmArena::allocate_locked(std::size_t bytes, bool may_grow,
                                                                     std::size_t* grow_for) noexcept {
  if (bytes == 0 || bytes > reserve_bytes_) return nullptr;
  std::size_t block = round_up(bytes, kMinAlignment);
  if (Range* again = freed_unmerged_; again && again->size == block) {
    freed_unmerged_ = nullptr;  // live again, still in the hash: the split it came from stands
    count_carved(again, bytes);
    return reinterpret_cast<void*>(again->start);
  }
  merge_deferred_free();
  // Holes first, the wilderness (free memory right below unmapped space) last: see the header.
  Range* r = find_fit(block, kBinScanLimit);
  if (!r) r = wilderness_fit(block);
  // Without growth: no exactly where allocate() would grow, so a caller that gives blocks back and asks
  // again gets the placement allocate() would have chosen (no full scan, which would pick another hole).
  if (!r && !may_grow) return nullptr;
  if (!r && new_peak_refused() && raises_device_peak(block)) {
    // The caller would rather wait for freed blocks than raise the peak (allocators/growth_policy.h):
    // nullptr is not a failure here (allocate() does not count it).
    r = find_fit(block, std::numeric_limits<int>::max());
    if (!r) return nullptr;
  }
  if (!r && grow_for) {
    *grow_for = block;  // the caller grows, outside the lock, and asks again
    return nullptr;
  }
  // Before reporting out-of-memory, make sure no fitting range hid beyond the bounded scan.
  if (!r) r = find_fit(block, std::numeric_limits<int>::max());
  if (!r) return nullptr;
  remove_free(r);
  if (r->size > block) {
    // Hand out the front, keep the rest free. Without a spare node the whole range goes out (its excess
    // shows as internal waste) rather than failing.
    if (Range* rest = new_range()) {
      rest->start = r->start + block;
      rest->size = r->size - block;
      rest->next = r->next;
      rest->prev = r;
      if (r->next) r->next->prev = rest;
      r->next = rest;
      r->size = block;
      insert_free(rest);
    }
  }
  r->state = RangeState::live;
  hash_insert(r);
  count_carved(r, bytes);
  return reinterpret_cast<void*>(r->start);
}

inline void VmmArena::count_carved(Range* r, std::size_t bytes) noexcept {
  r->requested = bytes;
  ++allocations_;
  bytes_in_use_ += bytes;
  peak_bytes_in_use_ = std::max(peak_bytes_in_use_, bytes_in_use_);
  live_block_bytes_ += r->size;
  just_carved_ = r;
}

void* VmmArena::allocate(std::size_t bytes, StreamHandle) noexcept {
  // At the peak with every free fenced, the router's allocations ask here first under a NoNewPeakScope,
  // and the arena, full, says no after its lock: 16 threads with a stream each at 1 MiB on the H200
  // spent 66% of their time at the peak waiting for this lock to hear it (nineteenth session).
  if (new_peak_refused() && below_peak_hint_.load(std::memory_order_relaxed) < bytes) return nullptr;
  std::size_t grow_for = 0;
  {
    const CountingLock lock(*this);
    if (void* p = allocate_locked(bytes, /*may_grow=*/true, &grow_for)) return p;
    if (!grow_for) {
      if (!new_peak_refused()) ++failed_;
      return nullptr;
    }
  }
  return allocate_growing(bytes);
}

// The provider's calls that map a step (cuMemCreate, cuMemMap, cuMemSetAccess: ~100 us on the H200) run
// outside mutex_, so other threads' frees and fitting allocations go on meanwhile. Made under it, 16
// threads with a stream each at 1 MiB spent 635 ms waiting for a lock held 54 ms in all, 29 ms of that
// mapping (twentieth session). One thread grows at a time (grow_mutex_): another that needs memory waits
// for it, then finds the new step, rather than mapping a step of its own.
void* VmmArena::allocate_growing(std::size_t bytes) noexcept {
  const std::lock_guard<std::mutex> one_grower(grow_mutex_);
  std::optional<CountingLock> lock(std::in_place, *this);
  const auto fail = [this] {
    if (!new_peak_refused()) ++failed_;
    return nullptr;
  };
  // The free ranges next to the unmapped space that a growth joins may be taken while it maps: after
  // one such growth, the next maps the whole block.
  bool whole_block = false;
  bool need_only = false;  // the provider refused a step: map only what the block needs (under a cap)
  for (int round = 0; round < 4; ++round) {
    std::size_t grow_for = 0;
    if (void* p = allocate_locked(bytes, /*may_grow=*/true, &grow_for)) return p;
    if (!grow_for) return fail();
    bool was_least = false;
    // Restored if the provider refuses the step.
    const PeaksBefore peaks_before{peak_mapped_, totals_->peak_mapped.load(std::memory_order_relaxed)};
    Range* piece = claim_growth(grow_for, whole_block, need_only, &was_least);
    if (!piece) break;
    lock.reset();
    const bool mapped = map_growth(piece->start, piece->size);
    lock.emplace(*this);
    if (finish_growth(piece, mapped, peaks_before)) {
      whole_block = true;
      need_only = false;
    } else if (was_least) {
      break;
    } else {
      need_only = true;
    }
  }
  // Before reporting out-of-memory, make sure no fitting range hid beyond the bounded scan.
  if (void* p = allocate_locked(bytes, /*may_grow=*/true, nullptr)) return p;
  return fail();
}

// A growth beyond a step is a large block's need: mapped as two chunks, all but the last granule and
// that granule, because the next large block is placed behind this one's free tail (claim_growth) and
// so starts inside that granule. One chunk pinned this block's whole memory while that neighbour lived:
// on the H200 a freed 256 MiB block beside a live one stayed mapped with the release threshold at 0
// (docs/perf-notes.md, thirty-second session). Split, the neighbour pins one granule. A step (small
// blocks' growth) stays one chunk: one map call, and a granule's worth at stake.
bool VmmArena::map_growth(std::uintptr_t start, std::size_t bytes) noexcept {
  const std::size_t body = first_chunk_of_growth(bytes);
  if (body == bytes) return provider_.map(reinterpret_cast<void*>(start), bytes);
  if (!provider_.map(reinterpret_cast<void*>(start), body)) return false;
  if (provider_.map(reinterpret_cast<void*>(start + body), granularity_)) return true;
  provider_.unmap(reinterpret_cast<void*>(start), body);
  return false;
}

void* VmmArena::allocate_without_growing(std::size_t bytes, StreamHandle) noexcept {
  // Nothing mapped could hold it: no need for the lock. At the peak with every free fenced, each
  // allocation that met the peak asked here under the lock and found nothing (16 threads with a stream
  // each at 16 MiB on the H200: 19% of their wall-clock time waiting for it). A block freed while this
  // reads is found by the caller's next ask, as one freed just after the call would be.
  if (free_bytes_hint_.load(std::memory_order_relaxed) < bytes) return nullptr;
  const CountingLock lock(*this);
  return allocate_locked(bytes, /*may_grow=*/false, nullptr);  // a no here is not a failed allocation
}


// Inline into deallocate: below the threshold, the common case, it is one compare. Without a delay,
// prompt_release_above_ is the threshold itself, so such a free is due by the second compare and never
// reads the clock.
inline bool VmmArena::release_may_be_due() const noexcept {
  const std::size_t cached = cached_bytes();
  if (cached <= release_threshold_) return false;  // below it, without reading the clock
  return cached > prompt_release_above_ || idle_window_passed(monotonic_ns());
}

__attribute__((always_inline)) inline void VmmArena::deallocate_locked(void* p, bool give_back_chunks) noexcept {
  if (!buckets_) return;
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  Range* r = just_carved_;
  if (r && r->start == start) {  // the block the last call carved: its merge may wait ("A split undone")
    just_carved_ = nullptr;
    count_freed(r);
    if (!give_back_chunks && !release_may_be_due()) {
      freed_unmerged_ = r;
      return;
    }
    hash_remove(start);
  } else {
    merge_deferred_free();
    r = hash_remove(start);
    if (!r) return;  // the router validates ownership; nothing sane to do with a stranger here
    count_freed(r);
  }
  r->state = RangeState::free;
  r = merge_free_neighbours(r);
  insert_free(r);
  if (give_back_chunks && r->size >= granularity_) {
    release_chunks_inside(r, 0);  // r may be gone now; what else is due waits for the next free
    return;
  }
  if (cached_bytes() <= release_threshold_) return;
  if (cached_bytes() > prompt_release_above_ && r->size >= granularity_) release_chunks_inside(r, prompt_release_above_);
  if (release_delay_ns_ != 0) release_idle_memory();
}

void VmmArena::deallocate(void* p, std::size_t, StreamHandle) noexcept {
  const CountingLock lock(*this);
  deallocate_locked(p, /*give_back_chunks=*/false);
}

inline void VmmArena::deallocate_under_one_lock(BlockToFree* blocks, std::size_t count,
                                                bool give_back_chunks) noexcept {
  if (count == 0) return;
  const CountingLock lock(*this);
  for (std::size_t i = 0; i < count; ++i) deallocate_locked(blocks[i].p, give_back_chunks);
}

void VmmArena::deallocate_batch(BlockToFree* blocks, std::size_t count) noexcept {
  deallocate_under_one_lock(blocks, count, /*give_back_chunks=*/false);
}

void VmmArena::deallocate_giving_back(BlockToFree* blocks, std::size_t count) noexcept {
  deallocate_under_one_lock(blocks, count, /*give_back_chunks=*/true);
}

inline void VmmArena::count_freed(Range* r) noexcept {
  ++deallocations_;
  bytes_in_use_ -= r->requested;
  live_block_bytes_ -= r->size;
  r->requested = 0;
}

void VmmArena::release_idle_memory() noexcept {
  const std::uint64_t now = monotonic_ns();
  if (!idle_window_passed(now)) return;
  // What stayed free through the whole window was not needed in it; the rest came and went.
  if (least_cached_in_window_ > release_threshold_) release_free_chunks(least_cached_in_window_ - release_threshold_);
  idle_window_began_ns_ = now;
  least_cached_in_window_ = cached_bytes();
}

// ---- physical memory ----

VmmArena::Range* VmmArena::claim_growth(std::size_t block, bool whole_block, bool need_only,
                                         bool* was_least) noexcept {
  // Pick the lowest unmapped range that can make `block` fit. Mapping at its start extends the free
  // range just below it, so a large block fits contiguously behind a free tail; lowest first keeps the
  // used address space compact (holes left by give-back are refilled before the tail moves up).
  Range* target = nullptr;
  std::size_t target_need = 0;
  for (Range* u = unmapped_; u; u = u->list_next) {
    std::size_t below = !whole_block && u->prev && u->prev->state == RangeState::free ? u->prev->size : 0;
    std::size_t above = !whole_block && u->next && u->next->state == RangeState::free ? u->next->size : 0;
    std::size_t need = block > below ? round_up(block - below, granularity_) : granularity_;
    if (need > u->size && below + u->size + above < block) continue;
    if (!target || u->start < target->start) {
      target = u;
      target_need = need;
    }
  }
  if (!target) return nullptr;
  const std::size_t least = std::min(target_need, target->size);
  const std::size_t step = std::min(target->size, std::max(grow_step_, target_need));
  // A full step may not fit under a cap that the bare need still fits: the caller asks for the need alone
  // after a refused step.
  const std::size_t bytes = need_only ? least : step;
  *was_least = bytes == least;
  Range* piece = target;
  if (bytes < target->size) {
    piece = new_range();
    if (!piece) return nullptr;
    piece->start = target->start;
    piece->size = bytes;
    link_before(piece, target);
    target->start += bytes;
    target->size -= bytes;
  } else {
    remove_unmapped(target);
  }
  piece->state = RangeState::mapping;
  refile_free_below(piece);  // no longer below unmapped space: from the wilderness into a bin
  // Counted as mapped from now on, so that a NoNewPeakScope elsewhere sees the peak it will make.
  mapped_ += bytes;
  growing_bytes_ = bytes;
  peak_mapped_ = std::max(peak_mapped_, mapped_);
  count_mapped(bytes);
  return piece;
}

// The device's totals: the other arenas of the device change them under their own locks.
void VmmArena::count_mapped(std::size_t bytes) noexcept {
  raise_peak(totals_->peak_mapped, totals_->mapped.fetch_add(bytes, std::memory_order_relaxed) + bytes);
}

bool VmmArena::finish_growth(Range* piece, bool mapped, const PeaksBefore& peaks_before) noexcept {
  merge_deferred_free();  // another thread's, while this one mapped outside the lock
  growing_bytes_ = 0;
  if (mapped) {
    // The chunks map_growth made: one, or all but the last granule and that granule.
    const std::size_t first = first_chunk_of_growth(piece->size);
    const bool split = first != piece->size;
    try {
      chunks_.emplace(piece->start, first);
      if (split) chunks_.emplace(piece->start + first, granularity_);
    } catch (...) {
      chunks_.erase(piece->start);
      provider_.unmap(reinterpret_cast<void*>(piece->start), first);
      if (split) provider_.unmap(reinterpret_cast<void*>(piece->start + first), granularity_);
      mapped = false;
    }
  }
  if (mapped) {
    piece->state = RangeState::free;
    insert_free(merge_free_neighbours(piece));
    return true;
  }
  mapped_ -= piece->size;
  peak_mapped_ = std::max(peaks_before.arena, mapped_);
  count_unmapped(piece->size);
  // The device's peak goes back too: to its value before the claim, or to what the device maps now if
  // that is more (another arena's growth meanwhile counts there). One compare-exchange: if the peak
  // moved since the load, the other arena's raise stands.
  std::size_t raised = totals_->peak_mapped.load(std::memory_order_relaxed);
  const std::size_t restored = std::max(peaks_before.device, totals_->mapped.load(std::memory_order_relaxed));
  if (raised > restored) totals_->peak_mapped.compare_exchange_strong(raised, restored, std::memory_order_relaxed);
  refile_free_below(merge_unmapped(piece));  // below unmapped space again: back to the wilderness
  return false;
}

// insert_free() decides from the range above whether a free range is wilderness: once that range's
// state changed, the free range below it is filed again.
void VmmArena::refile_free_below(Range* r) noexcept {
  if (Range* below = r->prev; below && below->state == RangeState::free) {
    remove_free(below);
    insert_free(below);
  }
}

VmmArena::Range* VmmArena::merge_unmapped(Range* hole) noexcept {
  hole->state = RangeState::unmapped;
  if (Range* prev = hole->prev; prev && prev->state == RangeState::unmapped) {
    prev->size += hole->size;
    unlink(hole);
    recycle(hole);
    hole = prev;
  } else {
    insert_unmapped(hole);
  }
  if (Range* next = hole->next; next && next->state == RangeState::unmapped) {
    remove_unmapped(next);
    hole->size += next->size;
    unlink(next);
    recycle(next);
  }
  return hole;
}

// Gives back `chunk`, which lies inside `free_range` (removed from its bin by the caller or not: handled
// here). Returns the unmapped range that now covers the chunk, or nullptr if it could not be done.
VmmArena::Range* VmmArena::release_chunk(Range* free_range,
                                         std::map<std::uintptr_t, std::size_t>::iterator chunk) noexcept {
  std::uintptr_t start = chunk->first;
  std::size_t bytes = chunk->second;
  std::uintptr_t end = start + bytes;
  std::uintptr_t range_end = free_range->start + free_range->size;
  Range* left = start > free_range->start ? new_range() : nullptr;
  Range* right = end < range_end ? new_range() : nullptr;
  if ((start > free_range->start && !left) || (end < range_end && !right)) {
    if (left) recycle(left);
    if (right) recycle(right);
    return nullptr;
  }
  remove_free(free_range);
  provider_.unmap(reinterpret_cast<void*>(start), bytes);
  chunks_.erase(chunk);
  mapped_ -= bytes;
  count_unmapped(bytes);
  // Unmapped before the parts are binned: the left part now lies below unmapped space (wilderness).
  free_range->state = RangeState::unmapped;
  if (left) {
    left->start = free_range->start;
    left->size = start - free_range->start;
    link_before(left, free_range);
    insert_free(left);
  }
  if (right) {
    right->start = end;
    right->size = range_end - end;
    right->prev = free_range;
    right->next = free_range->next;
    if (free_range->next) free_range->next->prev = right;
    free_range->next = right;
    insert_free(right);
  }
  free_range->start = start;
  free_range->size = bytes;
  return merge_unmapped(free_range);
}

std::size_t VmmArena::release_chunks_inside(Range* free_range, std::size_t keep) noexcept {
  std::size_t released = 0;
  auto chunk = chunks_.lower_bound(free_range->start);
  while (free_range && free_range->state == RangeState::free && chunk != chunks_.end() &&
         chunk->first + chunk->second <= free_range->start + free_range->size) {
    if (cached_bytes() <= keep) break;
    auto next_chunk = std::next(chunk);
    std::size_t bytes = chunk->second;
    Range* hole = release_chunk(free_range, chunk);
    if (!hole) break;
    released += bytes;
    free_range = hole->next;  // the free rest of the range, if any
    chunk = next_chunk;
  }
  return released;
}

void VmmArena::release_idle() noexcept {
  if (release_delay_ns_ == 0 || !mutex_.try_lock()) return;  // without a delay, frees give it back
  merge_deferred_free();
  if (cached_bytes() > release_threshold_) release_idle_memory();
  store_hints();
  mutex_.unlock();
}

bool VmmArena::release_due_with(std::uint64_t held_in_front) noexcept {
  if (held_in_front == 0 || !mutex_.try_lock()) return false;
  bool due = false;
  if (cached_bytes() + held_in_front > release_threshold_) {
    const std::uint64_t now = monotonic_ns();
    due = idle_window_passed(now) && (held_taken_ns_ == 0 || now - held_taken_ns_ >= release_delay_ns_);
    if (due) held_taken_ns_ = now;
  }
  mutex_.unlock();
  return due;
}

std::size_t VmmArena::release_cached() noexcept {
  std::lock_guard<AdaptiveMutex> lock(mutex_);
  merge_deferred_free();
  const std::size_t released = release_free_chunks(SIZE_MAX);
  store_hints();
  return released;
}

std::size_t VmmArena::release_free_chunks(std::size_t budget) noexcept {
  std::size_t released = 0;
  // Walk ranges and chunks together in address order: a chunk goes back when one free range covers it.
  Range* r = head_;
  auto chunk = chunks_.begin();
  while (r && chunk != chunks_.end()) {
    if (r->start + r->size <= chunk->first) {
      r = r->next;
      continue;
    }
    if (r->state == RangeState::free && r->start <= chunk->first &&
        chunk->first + chunk->second <= r->start + r->size && chunk->second <= budget - released) {
      auto next_chunk = std::next(chunk);
      std::size_t bytes = chunk->second;
      Range* hole = release_chunk(r, chunk);
      if (!hole) break;
      released += bytes;
      r = hole;
      chunk = next_chunk;
    } else {
      ++chunk;  // a live block touches this chunk, or it is larger than what is left to give back
    }
  }
  return released;
}

AllocatorStats VmmArena::stats() const noexcept {
  std::lock_guard<AdaptiveMutex> lock(mutex_);
  // The largest free block counts a deferred free merged. Merging changes what the arena holds no more
  // than the free did; only the ranges' bookkeeping, hence the cast.
  const_cast<VmmArena*>(this)->merge_deferred_free();
  AllocatorStats s;
  s.allocations = allocations_;
  s.deallocations = deallocations_;
  s.failed_allocations = failed_;
  s.bytes_in_use = bytes_in_use_;
  s.peak_bytes_in_use = peak_bytes_in_use_;
  s.bytes_reserved = mapped_;
  s.peak_bytes_reserved = peak_mapped_;
  s.bytes_cached = cached_bytes();
  s.internal_waste = live_block_bytes_ - bytes_in_use_;
  if (first_level_map_) {
    int first = 63 - __builtin_clzll(first_level_map_);
    int second = 31 - __builtin_clz(second_level_map_[first]);
    for (Range* r = bins_[first][second]; r; r = r->list_next)
      s.largest_free_block = std::max<std::uint64_t>(s.largest_free_block, r->size);
  }
  for (Range* r = wilderness_; r; r = r->list_next)
    s.largest_free_block = std::max<std::uint64_t>(s.largest_free_block, r->size);
  return s;
}

std::size_t VmmArena::chunk_count() const noexcept {
  std::lock_guard<AdaptiveMutex> lock(mutex_);
  return chunks_.size();
}

}  // namespace gpushim
