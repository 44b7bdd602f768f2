// Which streams carry work: the free-safety rule (docs/free-safety.md).
//
// A block freed with cuMemFree is handed out again at once while all GPU work that may still be running
// is totally ordered: the legacy stream plus at most one blocking stream carry work (they wait for each
// other's earlier work both ways). Any other stream that carries work ends that until gpushim has seen
// its work finish; meanwhile frees are fenced (router/free_fence_queue.h).
//
// What "carries work" means is decided by work submissions, not by stream creation: the shim calls
// begin_stream_work() before every kernel launch, async copy or set, graph launch and stream memory
// operation (shim/work_submission_hooks.cpp), and end_stream_work() once the driver has queued it. A
// stream that carries work for the first time since it was last seen idle is *joined* first: it waits
// (cuStreamWaitEvent) for the legacy stream and every other active blocking stream, so its new work is
// ordered after every earlier user of a block that was reused at once (stream_activity.cpp,
// become_active, says why the active non-blocking streams need no wait). A stream goes idle again when
// an event recorded on it completes with no submission since (poll_stream_activity()).
//
// Solo: while exactly one non-blocking stream S carries work, and nothing else does, a freed block is
// handed out again at once too, as in stream order: its earlier users are S's work, or legacy work that
// S's join waited for. Whatever else touches the block next must first wait for S, so the first other
// work ends solo: a legacy submission (launch, async or synchronous copy or set, all watched) makes the
// legacy stream wait for an event recorded on S, and another stream's join waits for that event. Solo
// begins at S's join when nothing counted before it, or at a poll once every other active stream has
// been idle a while; in both, only when no legacy submission is in flight and the legacy stream's work
// belongs to S's context and is done or waited for. stream_activity.cpp (become_active,
// begin_solo_beside_quiet_streams, end_solo) says why each step is exact. GPUSHIM_FREE_FENCE=no-solo
// turns it off.
//
// Per-stream state is one atomic word, so the launch path costs two uncontended atomic operations:
//   bit 0         active (counted in g_unordered)
//   bits 1..16    submissions in flight (begun, not yet returned from the driver)
//   bits 17..63   submissions begun, ever (a probe is valid only if this did not move)
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include <cuda.h>

#include "diagnostics/hot_tls.h"
#include "router/probe_words.h"

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

inline constexpr std::uint64_t kStreamActive = 1;
inline constexpr std::uint64_t kInFlightOne = 2;
inline constexpr std::uint64_t kInFlightMask = 0xffffull << 1;
inline constexpr unsigned kSubmissionShift = 17;  // a word's submissions begun: word >> kSubmissionShift
inline constexpr std::uint64_t kSubmissionOne = 1ull << kSubmissionShift;

struct StreamRecord {
  std::atomic<std::uint64_t> word{0};
  // Set by a poll that found the stream idle and left it active (others still work): the next
  // submission to it queues its probe itself, once queued (probe_after_submission). The poll after that
  // submission asked the stream (cuStreamQuery) and queued the probe, both under the activity lock, for
  // which every activation waited: with 16 threads each launching on its stream, that lock was the
  // largest wait left (6.5-7.6% of all samples on the H200, seventeenth session).
  std::atomic<bool> probe_wanted{false};
  CUstream stream = nullptr;
  CUcontext context = nullptr;
  bool blocking = false;
  // Under the activity lock (stream_activity.cpp):
  // The probe: a write of `probe_word` queued on the stream (router/probe_words.h), or where the driver
  // refuses that, an event recorded there; idle once it has landed and word == probe_stamp.
  ProbeWord probe_word;          // kept when the record is recycled (its value only grows)
  CUevent probe = nullptr;
  bool probe_by_word = false;
  std::uint32_t probe_word_misses = 0;  // polls that found the word unwritten
  std::uint64_t probe_stamp = 0;
  bool probing = false;
  bool retiring = false;         // destroyed while active: counted until its probe completes
  bool joining = false;          // counted, its join under way outside the lock (become_active)
  std::uint64_t idle_stamp = 0;  // its word when a poll found it idle (0: never; an active word is odd)
  std::uint64_t idle_since_ns = 0;  // when a poll found it idle at idle_stamp (monotonic_ns)
  // Unique per registration: records and stream handles are reused. Written under the activity lock,
  // loaded without it by stream_passed (below).
  std::atomic<std::uint64_t> serial{0};
  // How many of the stream's submissions (its word's bits 17..63) are known done: stored under the
  // activity lock by the polls that find the stream idle at a word or see a probe land, loaded without
  // it by the threads whose fenced batches wait for the stream (StreamMark, below).
  std::atomic<std::uint64_t> done_submissions{0};
  StreamRecord* next_free = nullptr;
};

// Low 32 bits: active streams that break the total order (non-blocking ones, plus kUnorderedForever once
// work went to a stream gpushim cannot probe), and solo's state bits. High 32 bits: active blocking
// streams. The bits change only under the activity lock (stream_activity.cpp).
extern std::atomic<std::uint64_t> g_unordered;
inline constexpr std::uint64_t kBlockingOne = 1ull << 32;
inline constexpr std::uint64_t kUnorderedForever = 1ull << 24;
inline constexpr std::uint64_t kSoloPending = 1ull << 25;       // the lone stream's join is under way
inline constexpr std::uint64_t kSolo = 1ull << 26;              // frees beside the lone stream are reused at once
inline constexpr std::uint64_t kLegacyBehindSolo = 1ull << 27;  // solo ended; legacy work must wait for its event
inline constexpr std::uint64_t kSoloBits = kSoloPending | kSolo | kLegacyBehindSolo;

// True when the work is totally ordered: the legacy stream, plus at most one blocking stream.
inline bool totally_ordered(std::uint64_t unordered) noexcept {
  return (unordered & 0xffffffffu) == 0 && (unordered >> 32) <= 1;
}
// True while a freed block may be handed out again at once: the work is totally ordered, or one
// non-blocking stream carries it alone (solo). The load is seq_cst: a stream's transition increments
// g_unordered (seq_cst) before it records its join event, so a free that reads "ordered" was queued
// before that event, and the joined stream waits for its block's last user; solo's end clears kSolo
// (seq_cst) before it records its event on the lone stream, with the same effect.
inline bool freed_blocks_reusable_at_once() noexcept {
  const std::uint64_t unordered = g_unordered.load(std::memory_order_seq_cst);
  return totally_ordered(unordered) || unordered == (1 | kSolo);
}

// Legacy submissions, begun and ended (returned from the driver), striped so that threads launching on
// the legacy stream share no cache line. Solo may begin only when none is in flight (one that read
// g_unordered before solo was pending may be queued after the lone stream's join looked at the legacy
// stream); a marked batch (StreamMark, below) only when every one begun is known done. Counted while
// solo or marked batches are allowed (legacy_counted), which both need for that reason.
inline constexpr unsigned kLegacyStripes = 16;
struct alignas(64) LegacyStripe {
  std::atomic<std::uint64_t> begun{0};
  std::atomic<std::uint64_t> ended{0};
};
extern LegacyStripe g_legacy_submissions[kLegacyStripes];
inline GPUSHIM_HOT_TLS LegacyStripe* t_legacy_stripe = nullptr;
// What the settings allow, read on first use (-1 until then): kSoloAllowed (GPUSHIM_FREE_FENCE=auto),
// kLegacyCounted (solo, or marked batches: both need the legacy submissions counted).
inline constexpr int kSoloAllowed = 1;
inline constexpr int kLegacyCounted = 2;
extern std::atomic<int> g_legacy_rules;
// What begin_stream_work returns for legacy work while it is counted: end_stream_work then leaves the
// thread's stripe.
extern StreamRecord g_legacy_submission;
// Out of line (stream_activity.cpp): the first call's settings, a thread's stripe, the legacy work's
// context, and the slow path of legacy work while solo is under way or has ended.
int read_legacy_rules() noexcept;
LegacyStripe* assign_legacy_stripe() noexcept;
void check_legacy_context() noexcept;
void legacy_work_beside_solo() noexcept;

inline int legacy_rules() noexcept {
  const int rules = g_legacy_rules.load(std::memory_order_relaxed);
  return __builtin_expect(rules < 0, 0) ? read_legacy_rules() : rules;
}
inline bool solo_allowed() noexcept { return (legacy_rules() & kSoloAllowed) != 0; }
inline bool legacy_counted() noexcept { return (legacy_rules() & kLegacyCounted) != 0; }

// Before the driver queues work on the legacy stream (synchronous copies and sets included).
inline StreamRecord* begin_legacy_work() noexcept {
  if (!legacy_counted()) return nullptr;
  LegacyStripe* stripe = t_legacy_stripe;
  if (__builtin_expect(stripe == nullptr, 0)) stripe = assign_legacy_stripe();
  // Counted (seq_cst) before g_unordered is read: a solo that begins after this read sees the count.
  stripe->begun.fetch_add(1, std::memory_order_seq_cst);
  if (__builtin_expect((g_unordered.load(std::memory_order_seq_cst) & kSoloBits) != 0, 0)) {
    legacy_work_beside_solo();
  } else {
    check_legacy_context();
  }
  return &g_legacy_submission;
}

// The calling thread's last streams: a launch loop on a few streams finds its record without a lock.
struct StreamRecordCacheEntry {
  CUstream stream;
  StreamRecord* record;
  std::uint64_t generation;
};
inline GPUSHIM_HOT_TLS StreamRecordCacheEntry t_stream_records[4];
inline GPUSHIM_HOT_TLS unsigned t_stream_records_next = 0;
extern std::atomic<std::uint64_t> g_stream_records_generation;  // bumped when a stream is destroyed

// Slow paths (stream_activity.cpp): the record of a stream not in this thread's cache, and the
// transition of an idle stream to active (join). Both return the record to pass to end_stream_work, or
// nullptr when nothing is to be tracked (the submission is captured into a graph, or it goes to a
// per-thread default stream, which ends total order for good).
StreamRecord* begin_stream_work_uncached(CUstream stream) noexcept;
StreamRecord* become_active(StreamRecord* record) noexcept;

// The stream this thread's submission must probe once the submission is queued (it made the stream
// active, or the stream was found idle since its last probe), until that submission ends.
inline GPUSHIM_HOT_TLS StreamRecord* t_probe_after_submission = nullptr;
// After such a submission: queues the stream's probe at once (else a poll would, in a free).
void probe_after_submission(StreamRecord* record) noexcept;

// A submission to a stream that is active already: probed after it when a poll found the stream idle.
inline StreamRecord* submitting_to_active(StreamRecord* record) noexcept {
  if (__builtin_expect(record->probe_wanted.load(std::memory_order_relaxed), 0)) t_probe_after_submission = record;
  return record;
}

// Before the driver queues work on `stream`. `per_thread_variant`: the caller is a _ptsz entry point,
// in which stream 0 names the calling thread's per-thread default stream.
inline StreamRecord* begin_stream_work(CUstream stream, bool per_thread_variant) noexcept {
  // The legacy stream is the order every other stream is joined to: nothing to track, unless a lone
  // stream's frees are reused at once (solo).
  if (stream == CU_STREAM_LEGACY || (stream == nullptr && !per_thread_variant)) return begin_legacy_work();
  const std::uint64_t generation = g_stream_records_generation.load(std::memory_order_acquire);
  for (const StreamRecordCacheEntry& entry : t_stream_records) {
    if (entry.stream != stream || entry.generation != generation) continue;
    StreamRecord* record = entry.record;
    const std::uint64_t before = record->word.fetch_add(kSubmissionOne + kInFlightOne, std::memory_order_acq_rel);
    return (before & kStreamActive) ? submitting_to_active(record) : become_active(record);
  }
  return begin_stream_work_uncached(stream);
}

// After the driver returned from queuing the work (whatever it answered).
inline void end_stream_work(StreamRecord* record) noexcept {
  if (!record) return;
  if (record == &g_legacy_submission) {
    t_legacy_stripe->ended.fetch_add(1, std::memory_order_release);
    return;
  }
  record->word.fetch_sub(kInFlightOne, std::memory_order_release);
  if (__builtin_expect(record == t_probe_after_submission, 0)) probe_after_submission(record);
}

// Before a capture begins (before the driver's cuStreamBeginCapture): solo ends, since its end records
// an event on the lone stream, which must not become a node of a capture; and none begins until the
// capture is counted in g_active_captures (capture_began).
void before_capture_begins() noexcept;
void capture_began() noexcept;  // after it, whether or not the driver began it

// Registers a stream the program created / forgets one it is destroying (before the real destroy).
void track_stream(CUstream stream, unsigned int flags) noexcept;
void untrack_stream(CUstream stream) noexcept;
// Records probes on active streams and retires those whose probe completed with no work since. Cheap
// when nothing is active; skips (try-lock) when another thread is polling. At most
// kMaxDriverCallsPerPoll driver calls: with many active streams (a stream per thread) the streams not
// asked go first at the next poll, so one free never pays for every stream. True when this poll made the
// work totally ordered: a single thread sees each such transition (only polls uncount a stream).
inline constexpr int kMaxDriverCallsPerPoll = 4;
// `on_turned_ordered`: when this poll turns the work ordered, called with `arg` before the activity lock
// is let go. No stream can start work meanwhile (an idle stream's first submission waits for that lock
// in become_active), so a cuMemFree'd block it takes cannot have a user on a stream that started work
// since the transition, and may be given back unfenced once the lock is let go (docs/free-safety.md).
// It must only move blocks (no driver or backend call): every stream starting work waits for it.
using TurnedOrderedHook = void (*)(void* arg) noexcept;
// What a poll does for a stream that its query finds busy: queue a probe there, which a later poll reads
// without the driver, or only ask. A free of a large block asks only: it wants one answer, now (is the
// work ordered again, so the block need not be fenced?), and the batch closes and the every-8th polls
// queue the probes. With a launch between every pair of 16 MiB, each free queued a probe that the next
// launch made stale at once (a write costs the freeing thread 2.7-2.9 us on the H200).
enum class BusyStreams { probe, ask_only };
bool poll_stream_activity(TurnedOrderedHook on_turned_ordered = nullptr, void* arg = nullptr,
                          BusyStreams busy = BusyStreams::probe) noexcept;
// The fence of a cuMemFree batch (router/cuda_fence_events.cpp) covers only the streams that carry work.
// `visit` runs for every active stream under the activity lock, so none of them can be destroyed
// meanwhile (untrack_stream takes the lock before the real destroy); it returns false to stop the walk.
// `incomplete`: the active set does not name every stream that may still run work (work went to a
// per-thread default stream, or a destroyed stream is still counted), and nothing was visited.
struct ActiveStream {
  CUstream stream;
  CUcontext context;
  bool blocking;
  // Which registration of the stream, and its word (read under the activity lock, before the visitor
  // records anything): an event recorded on the stream while no submission was in flight covers all of
  // its work for as long as the word stays the same (router/cuda_fence_events.h, stream fences).
  std::uint64_t serial;
  std::uint64_t word;
};
using ActiveStreamVisitor = bool (*)(const ActiveStream& stream, void* arg) noexcept;
enum class ActiveStreamWalk { none_active, incomplete, visited, stopped };
ActiveStreamWalk visit_active_streams(ActiveStreamVisitor visit, void* arg) noexcept;
// A destroyed stream's queued work still runs, and no event can be recorded on it any more: makes the
// legacy stream of the current context wait for the probe recorded at its destroy, for every destroyed
// stream still counted, so an event recorded on the legacy stream next covers their work too. False
// when one has no probe (destroyed during a capture): its work cannot be waited for.
bool order_legacy_after_destroyed_streams() noexcept;
// A marked batch (router/marked_batches.h): the cuMemFree'd blocks a thread closed while streams carried
// work wait, with the thread, until every stream that was active at the close has done the submissions
// it had begun by then. The marks are loads to check, so the blocks come back to their thread as soon as
// the polls have seen those streams get that far, while other streams go on working; through the fence
// queue they waited for events recorded by one thread for all, or for the whole process to turn
// ordered (docs/free-safety.md, "Marked batches", says why this is exact).
struct StreamMark {
  const StreamRecord* record;
  std::uint64_t serial;       // the registration marked: a record recycled since had done its work
  std::uint64_t submissions;  // begun at the close (in flight included)
};
// True once the marked stream has done the submissions it had begun at the mark.
inline bool stream_passed(const StreamMark& mark) noexcept {
  return mark.record->serial.load(std::memory_order_acquire) != mark.serial ||
         mark.record->done_submissions.load(std::memory_order_acquire) >= mark.submissions;
}
// Marks every active stream into `marks` (cleared first), under the activity lock. False, with nothing
// to rely on, when the active set cannot vouch for all work issued so far: legacy work not known done,
// a destroyed stream still counted, work on a per-thread default stream, legacy work not counted
// (legacy_counted: neither solo nor marked batches allowed), no host memory. The caller then fences the
// batch through the queue.
bool mark_active_streams(std::vector<StreamMark>* marks) noexcept;

// For the statistics line: streams that became active (transitions), and joins recorded.
std::uint64_t stream_activations() noexcept;
// Solo's course: how often it began, and what ended it.
struct SoloCounts {
  std::uint64_t began = 0, ended_by_legacy = 0, ended_by_stream = 0, ended_by_capture = 0, ended_idle = 0;
};
SoloCounts solo_counts() noexcept;
void reset_stream_activity_after_fork() noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
