// Free-safety without waiting in the free path (docs/free-safety.md says why it is shaped this way).
//
// A block freed with cuMemFree is not handed back to its backend until no GPU work issued before the
// free can race its next user. Frees are gathered in small batches; a closed batch gets one fence
// (events recorded on the streams that matter, by a FenceEvents implementation);
// the blocks go back once every event of the fence has completed. The fence's cost grows with the
// active streams, so batches closed by several threads share one fence when they can (below). Async
// frees on stream S get a fence of one event on S.
//
// This file is the state machine only: the driver sits behind FenceEvents (router/cuda_fence_events.*),
// so the queue is tested on the CPU with a fake (tests/router_free_fence_queue_test.cpp).
#pragma once

#include <cstddef>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "allocators/adaptive_mutex.h"
#include "allocators/allocator.h"
#include "router/fence_times.h"

namespace gpushim {

// A batch closes at 256 blocks: one cuEventRecord (~2 us) per 256 frees is ~8 ns a pair, and a close
// (record, poll, give back 256 blocks) lands in fewer than 1% of pairs, so alloc_bench's 99th
// percentile is the common path's. (At 64 blocks, closes were 1.6% of pairs: the p99 was a close, and
// the record alone cost ~31 ns a pair on average.) 256 blocks held back are still few: small blocks are
// most of them, and the byte cap below bounds the large ones; a miss closes every batch anyway.
inline constexpr std::size_t kBatchMaxBlocks = 256;
// ... or at 64 MiB: large blocks must not sit in a half-full batch for long; 64 MiB is 32 VMM granules,
// small against an 80 GiB device, and one fence per 64 MiB of frees is still cheap.
inline constexpr std::size_t kBatchMaxBytes = std::size_t{64} << 20;
// A stream's async free list (router/stream_free_lists.h) closes as a batch does, except that a single
// block larger than a batch's bytes stays: closed at once, it cost every stream-ordered pair of 64 MiB
// or more an event record and a fresh block, ~2 us a pair at 1 GiB, 2-3x the driver's pool
// (docs/perf-notes.md, thirty-first session). The trace replay's model asks the same question.
inline constexpr bool stream_list_full(std::size_t blocks, std::size_t bytes) {
  return blocks >= kBatchMaxBlocks || (bytes >= kBatchMaxBytes && blocks > 1);
}
// The router's idle check runs every 4,096 frees of a thread (and after a context synchronization, at
// most once a millisecond): the arena's release delay and the ageing of quiet streams' lists ask the clock only
// then, never per free (router/router.cpp). The trace replay's model counts the frees (a trace records
// no synchronizations).
inline constexpr unsigned kFreesPerIdleCheck = 4096;

// The largest of the poller's own blocks that a round of its own goes to the backend with (BlockOwners):
// 8 KiB, the largest class of which the thread cache keeps a whole batch (allocators/
// thread_cache_allocator.h: 2 MiB or 256 blocks a class; a batch closes at 256 blocks or 64 MiB). A
// larger block went there too up to 1 MiB, and a batch's return overflowed the cache into the arena:
// 32 of a batch's 256 blocks kept at 64 KiB, 2 of 64 at 1 MiB, so every other fenced pair of that size
// took the arena's lock and search twice (CPU guard, every free fenced: 992 instructions a pair at 64
// KiB and 1,241 at 1 MiB, against 537 and 579 through the list; docs/perf-notes.md, sixteenth session).
// The list costs its owner a spin lock where the cache's lock has no locked instruction (one thread
// with a stream on the H200, fourteenth session: 180 -> 188 ns median at 64 KiB, 182 -> 197 at 1 MiB,
// the means unchanged, then); at 8 KiB and below the cache holds the batch, and the blocks stay there.
inline constexpr std::size_t kOwnBlockThroughCacheBytes = std::size_t{8} << 10;

struct FreedBlock {
  void* ptr = nullptr;
  std::size_t bytes = 0;           // the size the backend was asked for
  StreamHandle stream = 0;         // passed to deallocate (0: a cuMemFree)
  void* owner = nullptr;           // the freeing thread, for BlockOwners (nullptr: none to return to)
};

// Where a fenced block goes once its fence completed: back to the thread that freed it, whose next
// allocation takes it into its own cache, rather than into the cache of whichever thread polled. With
// a stream per thread every free is fenced: returned to the poller, a thread's blocks emptied its own
// cache, and every allocation of every other thread missed into the backend's shared locks (16
// threads: 2.6-45 us a pair on the H200, where one thread takes 0.1-0.3 us).
//
// In a round of completed blocks that the polling thread freed alone (one thread's program), the blocks
// its thread cache keeps a whole batch of (kOwnBlockThroughCacheBytes) skip this and go to the backend
// through the poller, so into its cache: a free after the work turned ordered is then still the next
// block handed out. Its larger blocks, and all of its blocks once other threads' are in the round, go to
// its list: through its cache (2 MiB a class), a batch of 1 MiB blocks overflowed into the shared
// backend, where every thread's next allocation fought for its lock; a large block went to the arena.
class BlockOwners {
 public:
  virtual ~BlockOwners() = default;
  // True when the calling thread freed every block of `blocks` (owner nullptr counts as its).
  virtual bool freed_by_caller(const std::vector<FreedBlock>& blocks) const noexcept = 0;
  // Hands every block whose owner (the caller included) can still take it to that owner and removes
  // it from its part; the caller gives the rest to the backend. `parts`: `count` vectors of blocks (a
  // batch and the batches merged into it), seen under one look at which threads are alive (per part,
  // the thread registry's lock was taken ten times as often at a transition with 16 threads, and 1 MiB
  // pairs lost 11% on the H200, seventeenth session). The caller's own blocks of at most
  // `own_kept_bytes` stay in their part (0: none do). No driver call, no backend call.
  virtual void return_to_owners(std::vector<FreedBlock>* const* parts, std::size_t count,
                                std::size_t own_kept_bytes) noexcept = 0;
};

// The opaque context a batch's events are recorded in (a CUcontext); nullptr = the device's default.
using FenceContext = void*;

struct FenceEvent {
  FenceContext context = nullptr;
  std::uintptr_t event = 0;  // a CUevent
  bool shared = false;       // also in other fences: release() drops a reference (router/cuda_fence_events.h)
  // The stream registration the event was recorded on and the record's place among the records of the
  // implementation (0, 0: not known). Events on one stream complete in the order they were recorded, so
  // a query that finds one complete answers for every older one there (router/cuda_fence_events.h).
  std::uint64_t stream_serial = 0;
  std::uint64_t sequence = 0;
};
struct Fence {
  std::vector<FenceEvent> events;
  // How many of `events`, from the first, were found complete: a later query asks only the rest (only
  // the fence queue's driver-lock holder queries a fence).
  std::size_t complete_events = 0;
};

class FenceEvents {
 public:
  enum class Record { recorded, postponed };  // postponed: a capture is active, try again later
  enum class Status { complete, pending };

  virtual ~FenceEvents() = default;
  // Fence of a cuMemFree batch: after all work issued so far that a later user of its blocks is not
  // already ordered after (router/cuda_fence_events.h says which streams that takes).
  virtual Record record_device_fence(FenceContext context, Fence* out) noexcept = 0;
  // Fence after all work issued so far on `stream`.
  virtual Record record_stream_fence(FenceContext context, StreamHandle stream, Fence* out) noexcept = 0;
  // complete also when the driver reports an error (a dead context runs no more work on the block).
  // May note in `fence` how far it got (Fence::complete_events).
  virtual Status query(Fence& fence) noexcept = 0;
  virtual void synchronize(const Fence& fence) noexcept = 0;
  virtual void release(Fence& fence) noexcept = 0;  // events back to their pool
  // False while giving blocks back would call the driver in a way a stream capture forbids (a
  // driver-backed backend frees with cuMemFree or cuMemFreeAsync on the legacy stream): completed
  // batches then wait for the next poll.
  virtual bool may_give_back() noexcept { return true; }
  virtual FenceEventCounts counts() const noexcept { return {}; }
};

// The frees of one thread for one device that have no fence yet.
class PendingBatch {
 public:
  // Returns true when the batch is full and should be closed.
  bool add(const FreedBlock& block, FenceContext context) {
    if (blocks_.empty()) {
      context_ = context;
      blocks_.reserve(kBatchMaxBlocks);  // one allocation per batch, not one per doubling
    }
    return add_to_started(block);
  }
  // add() to a batch that holds blocks already (its context set, its capacity reserved).
  bool add_to_started(const FreedBlock& block) noexcept {
    blocks_.push_back(block);  // never past the capacity add() reserved: a full batch is closed at once
    bytes_ += block.bytes;
    return blocks_.size() >= kBatchMaxBlocks || bytes_ >= kBatchMaxBytes;
  }
  bool empty() const noexcept { return blocks_.empty(); }
  bool holds(const void* p) const noexcept {
    for (const FreedBlock& block : blocks_)
      if (block.ptr == p) return true;
    return false;
  }
  std::size_t bytes() const noexcept { return bytes_; }
  FenceContext context() const noexcept { return context_; }
  std::vector<FreedBlock> take() noexcept {
    bytes_ = 0;
    context_ = nullptr;
    return std::move(blocks_);
  }

 private:
  std::vector<FreedBlock> blocks_;
  std::size_t bytes_ = 0;
  FenceContext context_ = nullptr;
};

// The closed batches of one device, waiting for their fences.
//
// Who talks to the driver: one thread at a time per device, the holder of driver_lock_, never under
// lock_. A close only queues its batch (lock_ held for a push) and then tries to become that thread. The
// thread that gets it records ONE fence for every batch still waiting for one (those of the same context
// and kind are merged first), so with a stream per thread, N threads closing batches pay one fence of N
// events, not N fences of N events each (its driver calls grow with the active streams: the fence of a
// cuMemFree batch is an event per active stream, router/cuda_fence_events.h). A thread that finds the
// driver lock taken returns at once: the holder looks again before it lets go, and every later close or
// poll records what is left. Merging is exact: a fence recorded after the last free of every merged
// batch covers each of them. A stream batch (cuMemFreeAsync) is recorded by its closing thread, on its
// stream, while the program's stream is surely alive.
class FreeFenceQueue {
 public:
  // `owners`: where completed blocks go first (nullptr: straight to the backend, as in the CPU tests).
  // `own_kept_bytes`: the largest of the poller's own blocks that a round of its own gives to the
  // backend rather than to its list (BlockOwners): kOwnBlockThroughCacheBytes where the backend has
  // thread caches; the largest size where it has none and is fast itself (the stream-ordered pool).
  // `record_after` (GPUSHIM_FENCE_DELAY): how long a cuMemFree batch closed in passing waits before a
  // poll records its fence. A side stream's burst of work often ends within it (a kernel of
  // microseconds): the work then turns ordered and the batch goes back with no fence at all
  // (take_device_batches). Recorded at its close, the fence (the legacy stream's cuStreamQuery,
  // an event per active stream, the queries of older fences) cost that free 3.5-4.2 us on the H200:
  // the one-thread p99 with a stream from 16 MiB up, where 4 blocks fill a batch. Recorded later, a
  // fence covers more work than it must, never less: only the blocks' return waits. Allocations at the
  // peak or in need record at once, and so does every poll from the first batch that waited in vain
  // until the work turns ordered again: where streams never all go idle (a stream per thread, work on
  // a per-thread default stream) a delay only holds blocks longer.
  FreeFenceQueue(Allocator& backend, FenceEvents& events, BlockOwners* owners = nullptr,
                 std::size_t own_kept_bytes = kOwnBlockThroughCacheBytes,
                 std::chrono::nanoseconds record_after = std::chrono::nanoseconds(0)) noexcept
      : backend_(backend), events_(events), owners_(owners), own_kept_bytes_(own_kept_bytes),
        record_after_(record_after) {}
  FreeFenceQueue(const FreeFenceQueue&) = delete;
  FreeFenceQueue& operator=(const FreeFenceQueue&) = delete;

  // Closes a batch of cuMemFree'd blocks: queues it for a device fence, recorded by the first poll
  // record_after from now (none while a capture is active), then polls. An empty batch of either kind
  // closes as nothing: no fence, no poll.
  void close_device_batch(std::vector<FreedBlock> blocks, FenceContext context) noexcept;
  // Closes the async-freed blocks of one stream: a fence of one event on that stream.
  void close_stream_batch(std::vector<FreedBlock> blocks, FenceContext context, StreamHandle stream) noexcept;
  // Blocks of a thread that exited before closing its batch. No driver call (this runs in thread-exit
  // and process-exit paths): they wait, unfenced, for the next close or poll to fence them.
  void adopt_orphans(std::vector<FreedBlock> blocks) noexcept;

  // Records the fences of batches that have none (when no capture blocks it) and gives the blocks of
  // completed fences back. Returns the bytes given back. Who polls decides how:
  // - in_passing (a close, a free now and then): returns 0 at once while another thread does this for
  //   the device (it records the caller's batch too, or the next poll does); records only batches
  //   closed record_after ago or more; completed blocks go to the threads that freed them (BlockOwners);
  // - allocation_at_peak (one that would otherwise raise the peak): waits for that thread rather than
  //   sleep and try again; completed blocks go to their owners, whose lists the allocation looks in
  //   next (router/returned_blocks.h). Given to the backend, every completed block of 16 threads took
  //   the arena's lock, and every waiting allocation took it again to look (16 threads with a stream
  //   each at 16 MiB on the H200: 37% of their wall-clock time in that lock); records every batch;
  // - allocation_in_need (one that would otherwise fail): waits too, and gives every completed block to
  //   the backend, where the allocation looks next.
  enum class Poller { in_passing, allocation_at_peak, allocation_in_need };
  std::size_t poll(Poller poller = Poller::in_passing) noexcept;
  // Memory pressure only: waits for the thread recording fences, records what has none, waits for every
  // recorded fence, then gives its blocks back.
  std::size_t synchronize_all() noexcept;
  // The GPU's work turned totally ordered (router/stream_activity.h): a cuMemFree'd block may be reused
  // at once, as one freed now would be, whatever its fence says. In two steps, because the caller must
  // take the blocks while no stream can start work (under the activity lock: router/router.cpp,
  // poll_turned_ordered) and give them back after, when one may. take_device_batches only moves blocks
  // (no driver call, no backend call): `open` (the threads' open batches, one vector each), the orphans
  // and every device-fenced batch, recorded or not; stream-fenced batches (cuMemFreeAsync) keep waiting
  // for their stream. While another thread holds the driver lock only `open` is taken (the rest comes
  // back through its fences). give_back_taken gives them to their owners or the backend, as poll()
  // does, and returns the bytes.
  class Taken;
  Taken take_device_batches(std::vector<std::vector<FreedBlock>> open) noexcept;
  std::size_t give_back_taken(Taken taken) noexcept;

  std::uint64_t pending_bytes() const noexcept;
  FenceTimes times() const noexcept;
  // False while a stream capture keeps completed batches from going back (FenceEvents::may_give_back).
  bool can_give_back() noexcept { return events_.may_give_back(); }
  // The most bytes that waited here at once (closed batches and orphans; open batches are per thread).
  std::uint64_t peak_pending_bytes() const noexcept;
  // True while `p` waits here (closed, orphaned or not yet given back). Cold: scans every batch.
  bool holds(const void* p) const noexcept;
  std::size_t batches() const noexcept;
  // True while blocks wait here (no lock: a hint read on frees that take effect at once, so blocks fenced
  // while a stream worked still come back once it has stopped).
  bool holds_blocks() const noexcept { return held_.load(std::memory_order_relaxed); }

  void reset_after_fork() noexcept;

 private:
  using Clock = std::chrono::steady_clock;
  struct ClosedBatch {
    std::vector<FreedBlock> blocks;  // written under lock_ (orphans), read under lock_ (holds)
    // The blocks of the batches merged into this one (record_waiting) and of the threads' open batches
    // (take_device_batches), a vector each: moved under lock_, where a merge once copied every
    // block (16 threads with a stream at 256 B on the H200: 256 blocks a batch, ten batches to a fence;
    // the closes waiting for lock_ in enqueue were 5% of all samples, seventeenth session).
    std::vector<std::vector<FreedBlock>> parts;
    std::size_t bytes = 0;           // the parts' included
    Clock::time_point closed_at{};   // a merge keeps the oldest's
    FenceContext context = nullptr;
    bool stream_fence = false;
    StreamHandle stream = 0;
    // Once queued, written only by the holder of driver_lock_, which may do so without lock_: no other
    // thread reads them, and only that holder removes a batch from the queue, so the batch outlives the
    // write. (A stream batch's closing thread records it before it is queued.)
    bool recorded = false;
    Clock::time_point recorded_at{};
    Fence fence;
  };
  using Batches = std::vector<std::unique_ptr<ClosedBatch>>;

 public:
  class Taken {  // take_device_batches' blocks, for give_back_taken
   public:
    Taken() noexcept = default;
    Taken(Taken&&) noexcept = default;
    Taken& operator=(Taken&&) noexcept = default;

   private:
    friend class FreeFenceQueue;
    Batches batches;
  };

 private:
  // `visit` on the blocks of `batch` (a ClosedBatch, const or not), then on each of its parts.
  template <typename Batch, typename Visit>
  static void for_each_part(Batch& batch, Visit visit) {
    visit(batch.blocks);
    for (auto& part : batch.parts) visit(part);
  }

  void enqueue(std::unique_ptr<ClosedBatch> batch) noexcept;
  // The steps of the driver-lock holder. record_waiting merges the batches without a fence and records
  // those closed record_after_ ago (`all`: every one);
  // take_completed asks at most kMaxPendingAnswersPerPoll pending fences and moves completed batches out.
  void record_waiting(bool all) noexcept;
  void take_completed(Batches& done) noexcept;
  // A record deferred to the driver-lock holder is always a device fence, for stream batches too: the
  // stream named at their close may be destroyed by now (a record on it would be a use after destroy in
  // the driver), and a device fence covers all work issued so far on every stream that can still run.
  bool try_record(ClosedBatch& batch) noexcept;
  // `to_owners`: completed blocks go to their owners first (BlockOwners); an allocation in need gives
  // everything to the backend, where it looks next.
  // `blocks_out`: the number of blocks given back is added to it.
  std::size_t give_back(Batches& done, bool to_owners, std::uint64_t* blocks_out = nullptr) noexcept;
  // FenceTimes' sums for the completed batches among `asked` (`complete[i]`), found complete `now`.
  void count_completed(ClosedBatch* const* asked, const bool* complete, std::size_t count) noexcept;
  // Moves the queued batches `take` picks into `out`, in queue order, and counts them out of
  // pending_bytes_. lock_ held.
  template <typename Predicate>
  void move_out_if(Predicate take, Batches& out) noexcept;
  void update_held() noexcept;  // lock_ held

  Allocator& backend_;
  FenceEvents& events_;
  BlockOwners* const owners_;
  const std::size_t own_kept_bytes_;
  const std::chrono::nanoseconds record_after_;
  std::mutex driver_lock_;   // taken before lock_, never the other way
  std::atomic<std::uint64_t> polls_{0};  // polls that asked the driver (written under driver_lock_)
  // FenceTimes (written by the driver-lock holder, or by give_back_taken for unfenced_blocks_).
  std::atomic<std::uint64_t> completed_fences_{0}, completed_blocks_{0};
  std::atomic<std::uint64_t> close_to_record_ns_{0}, record_to_complete_ns_{0};
  std::atomic<std::uint64_t> unfenced_blocks_{0};
  mutable AdaptiveMutex lock_;  // the queue and the counters; never held across a driver call
  std::deque<std::unique_ptr<ClosedBatch>> queue_;  // in close order (a merge keeps the oldest's place)
  std::vector<FreedBlock> orphans_;
  std::uint64_t pending_bytes_ = 0;  // lock_ held
  std::uint64_t peak_pending_bytes_ = 0;  // lock_ held
  std::atomic<bool> held_{false};         // written under lock_: queue_ or orphans_ not empty
  std::atomic<bool> unrecorded_{false};   // set by a close: a batch waits for the driver-lock holder
  // Polls in passing wait record_after_ before they record: set when the work turns ordered, cleared by
  // the first batch that waited and still had to be recorded.
  std::atomic<bool> defer_records_{false};
};

}  // namespace gpushim
