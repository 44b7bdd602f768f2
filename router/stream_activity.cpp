// Which streams carry work (router/stream_activity.h): the records, the join of a stream that starts
// work, and the probes that find it idle again.
#include "router/stream_activity.h"

#include <dlfcn.h>
#include <execinfo.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>
#include <unordered_map>
#include <vector>

#include "allocators/backend_registry.h"
#include "config/settings.h"
#include "diagnostics/log.h"
#include "diagnostics/monotonic_clock.h"
#include "driver/real_driver.h"
#include "driver/scoped_context.h"
#include "router/router_state.h"
#include "router/spin_lock.h"

namespace gpushim::router {

std::atomic<std::uint64_t> g_unordered{0};
// Bumped before every uncount that may leave the work totally ordered (uncount), so a join that reads
// the same value as an earlier one knows the work has not been ordered in between (become_active).
std::atomic<std::uint64_t> g_ordered_epoch{0};
std::atomic<std::uint64_t> g_stream_records_generation{1};
LegacyStripe g_legacy_submissions[kLegacyStripes];
std::atomic<int> g_legacy_rules{-1};
StreamRecord g_legacy_submission;

namespace {

// The context of the legacy work seen so far (the first legacy submission's, or the first solo
// stream's), and whether legacy work came from another context too. Solo needs the first: the lone
// stream's join waits for its own context's legacy stream only. The second is for good.
std::atomic<CUcontext> g_legacy_context{nullptr};
std::atomic<bool> g_legacy_in_many_contexts{false};
// Legacy submissions known done, counted as the stripes count them: the sum of the stripes' `begun` when
// a join found the legacy stream of g_legacy_context idle with none of them in flight (become_active).
// Only grows. A marked batch needs the sum to be this still (legacy_work_done).
std::atomic<std::uint64_t> g_legacy_submissions_done{0};
// Captures whose cuStreamBeginCapture is under way: no solo begins meanwhile (before_capture_begins).
std::atomic<int> g_captures_starting{0};

// Everything below is under `lock`. Allocated once and never freed: launches may still arrive
// from static destructors after exit() has begun.
struct Activity {
  // A spin lock (router/spin_lock.h: spins, then yields; never sleeps). Every activation takes it, and
  // with 16 threads each launching on its own stream the activations meet there after every transition
  // to ordered. As an adaptive mutex, whose waiters sleep after a short spin, the handoffs were the
  // largest wait left (6.6% of all samples at 256 B on the H200); as a spin lock 16 threads moved 18%
  // more pairs at 256 B and 7% at 64 KiB (tiered; vmm 21% and 7%), 4 threads the same (seventeenth
  // session, docs/perf-notes.md). Its sections are short: the driver calls left under it are a poll's
  // few and a fence's event per active stream.
  SpinLock lock;
  std::unordered_map<CUstream, StreamRecord*> by_stream;
  std::vector<StreamRecord*> active;  // records with kStreamActive set (and retiring ones)
  StreamRecord* free_records = nullptr;
  struct ScratchEvent {
    CUcontext context;
    CUevent event;
  };
  std::vector<ScratchEvent> join_events;  // one per context: re-recorded for every join
  std::uint64_t activations = 0;
  std::uint64_t registrations = 0;  // the last StreamRecord::serial given
  // A join that found the legacy stream of `legacy_done_context` done, and g_ordered_epoch as it read it
  // after its count (become_active says what that spares the joins after it).
  CUcontext legacy_done_context = nullptr;
  std::uint64_t legacy_done_epoch = 0;
  bool logged_first = false;
  // Solo (stream_activity.h). `solo`: the lone stream, from its pending join until its end's event is
  // known complete or it leaves the active set. `solo_end`: the event its end recorded on it (in
  // the one context solo can be in, g_legacy_context), which later work waits for while `solo_owed`.
  StreamRecord* solo = nullptr;
  CUevent solo_end = nullptr;
  bool solo_owed = false;
  SoloCounts solo_counts;
};
Activity& activity() {
  static Activity* state = new Activity();
  return *state;
}

StreamRecord* new_record() noexcept {
  Activity& a = activity();
  if (StreamRecord* reused = a.free_records) {
    a.free_records = reused->next_free;
    const ProbeWord word = reused->probe_word;  // a write still queued must never match a later probe
    reused->~StreamRecord();
    StreamRecord* record = new (reused) StreamRecord();
    record->probe_word = word;
    return record;
  }
  return new (std::nothrow) StreamRecord();
}

void recycle(StreamRecord* record) noexcept {
  Activity& a = activity();
  record->next_free = a.free_records;
  a.free_records = record;
}

StreamRecord* register_locked(CUstream stream, CUcontext context, bool blocking) noexcept {
  Activity& a = activity();
  StreamRecord* record = new_record();
  if (!record) return nullptr;
  record->stream = stream;
  record->context = context;
  record->blocking = blocking;
  record->serial = ++a.registrations;
  try {
    auto [it, inserted] = a.by_stream.emplace(stream, record);
    if (!inserted) {
      // A handle the driver reused without gpushim seeing the destroy: the old record goes.
      StreamRecord* old = it->second;
      it->second = record;
      if (!(old->word.load() & kStreamActive)) recycle(old);
    }
  } catch (...) {
    recycle(record);
    return nullptr;
  }
  return record;
}

// Set once work went where no record can follow it: the active set no longer names every stream that
// may still run work (visit_active_streams).
std::atomic<bool> g_unordered_for_good{false};

void end_total_order_for_good(const char* why) noexcept {
  if (g_unordered_for_good.exchange(true)) return;
  g_unordered.fetch_add(kUnorderedForever, std::memory_order_seq_cst);
  log(LogLevel::debug, "%s: freed blocks are fenced from now on", why);
}

CUevent scratch_event(CUcontext context) noexcept {  // with `context` current
  Activity& a = activity();
  for (const Activity::ScratchEvent& e : a.join_events)
    if (e.context == context) return e.event;
  CUevent event = nullptr;
  if (real_driver().cuEventCreate(&event, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) return nullptr;
  try {
    a.join_events.push_back({context, event});
  } catch (...) {
    real_driver().cuEventDestroy(event);
    return nullptr;
  }
  return event;
}

// True when `context`'s legacy stream has finished all its work: a stream that starts work then needs no
// wait for it (become_active). One cuStreamQuery instead of an event record and a stream wait.
bool legacy_stream_caught_up(CUcontext context) noexcept {
  ScopedContext scope(context);
  return scope.ok() && real_driver().cuStreamQuery(CU_STREAM_LEGACY) == CUDA_SUCCESS;
}

// `waiter` waits for all work queued so far on `stream` (in `context`). cuStreamWaitEvent takes the
// event's state at the call, so one scratch event per context serves every join.
bool wait_for(StreamRecord* waiter, CUcontext context, CUstream stream) noexcept {
  const RealDriver& driver = real_driver();
  ScopedContext scope(context);
  if (!scope.ok()) return false;
  CUevent event = scratch_event(context);
  return event && driver.cuEventRecord(event, stream) == CUDA_SUCCESS &&
         driver.cuStreamWaitEvent(waiter->stream, event, 0) == CUDA_SUCCESS;
}

void log_first_activation(const StreamRecord* record) noexcept {
  Activity& a = activity();
  if (a.logged_first || settings().log < LogLevel::debug) return;
  a.logged_first = true;
  // backtrace() may allocate on first use, so only at debug level.
  void* frames[12];
  const int count = backtrace(frames, 12);
  char modules[512];
  std::size_t used = 0;
  modules[0] = '\0';
  for (int i = 1; i < count && used + 64 < sizeof modules; ++i) {
    Dl_info info;
    if (!dladdr(frames[i], &info) || !info.dli_fname) continue;
    const char* base = std::strrchr(info.dli_fname, '/');
    used += std::snprintf(modules + used, sizeof modules - used, " %s+0x%lx", base ? base + 1 : info.dli_fname,
                          static_cast<unsigned long>(reinterpret_cast<std::uintptr_t>(frames[i]) -
                                                     reinterpret_cast<std::uintptr_t>(info.dli_fbase)));
  }
  log(LogLevel::debug,
      "first work on a %s stream %p: freed blocks are fenced while it carries work; by%s",
      record->blocking ? "blocking" : "non-blocking", static_cast<void*>(record->stream), modules);
}

// Publishes `record`'s probe as the write of its word's next value, which the caller queues
// (write_probe_value): until that write lands, the word reads "not landed". Returns the value.
std::uint32_t publish_word_probe(StreamRecord* record, std::uint64_t stamp) noexcept {
  record->probe_by_word = true;
  record->probing = true;
  record->probe_stamp = stamp;
  return reserve_probe_value(record->probe_word);
}

// Queues `record`'s probe now, with its context current: once the probe has landed, the stream is idle
// if its word still reads `stamp` (read before the probe, with no submission in flight). A write of its
// probe word where the driver takes one, else an event (created on first use); always an event for a
// stream being destroyed (`event`): order_legacy_after_destroyed_streams makes the legacy stream wait
// for it. False, and not probing, when the driver refused both.
bool start_probe(StreamRecord* record, std::uint64_t stamp, bool event = false) noexcept {
  if (!event && prepare_probe_word(record->probe_word, record->context) &&
      write_probe_value(record->stream, record->probe_word.device, publish_word_probe(record, stamp)))
    return true;
  const RealDriver& driver = real_driver();
  record->probe_by_word = false;
  record->probing = (record->probe || driver.cuEventCreate(&record->probe, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS) &&
                    driver.cuEventRecord(record->probe, record->stream) == CUDA_SUCCESS;
  if (record->probing) record->probe_stamp = stamp;
  return record->probing;
}

// A probe word that a poll found unwritten this many times gets its stream asked (below).
constexpr std::uint32_t kProbeWordMissesPerQuery = 64;

// True once `record`'s probe has landed: a load for a probe word, else a cuEventQuery (counted in
// `calls`). Errors other than NOT_READY (a destroyed context) mean no more work runs there: landed.
bool probe_landed(StreamRecord* record, int* calls) noexcept {
  if (record->probe_by_word) {
    if (probe_word_written(record->probe_word)) return true;
    // A write that can no longer land (its context destroyed, its streams with it, unseen by gpushim)
    // would keep the stream counted for good: now and then the stream itself is asked, and an error
    // means what it means for an event probe. (A stream whose work is done has written the word too.)
    if (++record->probe_word_misses % kProbeWordMissesPerQuery != 0) return false;
    ++*calls;
    ScopedContext scope(record->context);
    return !scope.ok() || real_driver().cuStreamQuery(record->stream) != CUDA_ERROR_NOT_READY;
  }
  ++*calls;
  return real_driver().cuEventQuery(record->probe) != CUDA_ERROR_NOT_READY;
}

// An active stream stops counting in g_unordered: true when that made the work totally ordered. Only
// polls uncount (under the activity lock), so one thread sees each such transition.
// The epoch is bumped first, while the stream still counts: a free that reads "ordered" after this
// uncount comes after the bump, and so does every count that follows such a free (all seq_cst). A bump
// for a value that a count changed meanwhile (the exchange fails) only makes a later join ask again.
// A lone stream that leaves takes solo's bits with it: its work is done, so nothing need wait for it.
bool uncount(Activity& a, const StreamRecord* record) noexcept {
  const bool solo = record == a.solo;
  std::uint64_t before = g_unordered.load(std::memory_order_seq_cst);
  std::uint64_t after = 0;
  do {
    after = before - (record->blocking ? kBlockingOne : 1) - (solo ? before & kSoloBits : 0);
    if (totally_ordered(after)) g_ordered_epoch.fetch_add(1, std::memory_order_seq_cst);
  } while (!g_unordered.compare_exchange_weak(before, after, std::memory_order_seq_cst));
  if (solo) {
    if (before & kSolo) ++a.solo_counts.ended_idle;
    a.solo = nullptr;
    a.solo_owed = false;
  }
  return !totally_ordered(before) && totally_ordered(after);
}

// The stream at a.active[i] was idle when its word read `stamp`: it leaves the active set unless a
// submission began since (the swap fails). True when it left; `*turned_ordered` is set when its leaving
// made the work totally ordered.
bool leave_active_if_unchanged(Activity& a, std::size_t i, std::uint64_t stamp, bool* turned_ordered) noexcept {
  StreamRecord* record = a.active[i];
  if (!record->word.compare_exchange_strong(stamp, stamp & ~kStreamActive, std::memory_order_seq_cst)) return false;
  if (uncount(a, record)) *turned_ordered = true;
  a.active[i] = a.active.back();
  a.active.pop_back();
  return true;
}

bool capturing(CUstream stream) noexcept {
  if (g_active_captures.load(std::memory_order_acquire) == 0) return false;
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  return real_driver().cuStreamIsCapturing(stream, &status) == CUDA_SUCCESS &&
         status != CU_STREAM_CAPTURE_STATUS_NONE;
}

// Solo's steps, all under the activity lock (so the bits change in one thread at a time).

// A pending solo that must not begin: other work came first (a legacy submission, another stream).
// The lone stream's join, outside the lock, finds kSoloPending gone and stays an ordinary active stream.
void cancel_pending_solo(Activity& a) noexcept {
  if (!(g_unordered.load(std::memory_order_seq_cst) & kSoloPending)) return;
  g_unordered.fetch_sub(kSoloPending, std::memory_order_seq_cst);
  a.solo = nullptr;
}

// Solo ends: frees are fenced from the clear of kSolo on (seq_cst, before the event is recorded), so
// every block a free reused at once was freed before the event, and the lone stream's users of it were
// queued before it too. kLegacyBehindSolo, set in the same step, sends every legacy submission that
// reads it to legacy_work_beside_solo, which queues the legacy stream's wait for the event before the
// submission; every join waits for it too while `solo_owed` (become_active).
void end_solo(Activity& a, std::uint64_t SoloCounts::*why) noexcept {
  if (!(g_unordered.load(std::memory_order_seq_cst) & kSolo)) return;
  g_unordered.fetch_add(kLegacyBehindSolo - kSolo, std::memory_order_seq_cst);
  ++(a.solo_counts.*why);
  StreamRecord* record = a.solo;
  const RealDriver& driver = real_driver();
  ScopedContext scope(record->context);
  if (scope.ok()) {
    if (!a.solo_end && driver.cuEventCreate(&a.solo_end, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) a.solo_end = nullptr;
    if (a.solo_end && driver.cuEventRecord(a.solo_end, record->stream) == CUDA_SUCCESS) {
      a.solo_owed = true;
      return;
    }
  }
  // No event (a driver that refuses, a context gone): wait for the stream here instead, once; then nothing
  // is owed. A stream whose context is gone runs nothing more.
  if (scope.ok()) driver.cuStreamSynchronize(record->stream);
  g_unordered.fetch_sub(kLegacyBehindSolo, std::memory_order_seq_cst);
  a.solo = nullptr;
}

// A pending solo begins: its lone stream's join (or the poll that let the others leave) is done.
void begin_pending_solo(Activity& a) noexcept {
  g_unordered.fetch_add(kSolo - kSoloPending, std::memory_order_seq_cst);
  ++a.solo_counts.began;
}

// Once solo's end event has completed, nothing waits for it any more (a poll asks).
void settle_solo(Activity& a) noexcept {
  if (g_unordered.load(std::memory_order_seq_cst) & kLegacyBehindSolo)
    g_unordered.fetch_sub(kLegacyBehindSolo, std::memory_order_seq_cst);
  a.solo_owed = false;
  a.solo = nullptr;
}

// `stream` (of `context`: the legacy stream's, or the stream of a join) waits for solo's end event: its
// work may use a block reused at once beside the lone stream.
bool wait_for_solo_end(const Activity& a, CUstream stream, CUcontext context) noexcept {
  ScopedContext scope(context);
  return scope.ok() && real_driver().cuStreamWaitEvent(stream, a.solo_end, 0) == CUDA_SUCCESS;
}

// Solo may begin once kSoloPending is published (seq_cst): no legacy submission in flight (one that read
// g_unordered before kSoloPending may be queued after the lone stream's join looked at the legacy stream;
// one that reads it after goes to legacy_work_beside_solo, which cancels), and the legacy work so far
// belongs to the lone stream's context (its join waits for that context's legacy stream only).
// The legacy work's context is `context`: it was, or it becomes so here if none was seen yet.
bool legacy_context_is(CUcontext context) noexcept {
  CUcontext expected = nullptr;
  return g_legacy_context.compare_exchange_strong(expected, context, std::memory_order_seq_cst) ||
         expected == context;
}

// The legacy submissions begun so far when none of them is in flight (each stripe's `ended` read before
// its `begun`: equal, every submission begun by then had returned from the driver), else UINT64_MAX.
std::uint64_t legacy_submissions_queued() noexcept {
  std::uint64_t total = 0;
  for (const LegacyStripe& stripe : g_legacy_submissions) {
    const std::uint64_t ended = stripe.ended.load(std::memory_order_seq_cst);
    const std::uint64_t begun = stripe.begun.load(std::memory_order_seq_cst);
    if (begun != ended) return UINT64_MAX;
    total += begun;
  }
  return total;
}

// True when every legacy submission begun so far is known done (g_legacy_submissions_done), in the one
// context legacy work has come from. The done count is read first: it only grows, and a sum equal to it
// means no legacy submission began since the join that found them done.
bool legacy_work_done() noexcept {
  if (g_legacy_in_many_contexts.load(std::memory_order_seq_cst)) return false;
  const std::uint64_t done = g_legacy_submissions_done.load(std::memory_order_seq_cst);
  std::uint64_t begun = 0;
  for (const LegacyStripe& stripe : g_legacy_submissions) begun += stripe.begun.load(std::memory_order_seq_cst);
  return begun == done;
}

bool legacy_work_allows_solo(CUcontext context) noexcept {
  if (legacy_submissions_queued() == UINT64_MAX) return false;
  return !g_legacy_in_many_contexts.load(std::memory_order_seq_cst) && legacy_context_is(context);
}

// What both of solo's beginnings (a join, a poll) need first: the setting, no solo already, and no
// capture active or starting (solo's end would record its event into the capture).
bool solo_may_begin(const Activity& a) noexcept {
  return a.solo == nullptr && solo_allowed() && g_active_captures.load(std::memory_order_acquire) == 0 &&
         g_captures_starting.load(std::memory_order_seq_cst) == 0;
}

// A join found the legacy stream of `context` idle, `queued` legacy submissions begun before it asked,
// none in flight (legacy_submissions_queued). They are done if legacy work has come from this context
// alone (check_legacy_context records the first context before its submission returns; a second one
// sets g_legacy_in_many_contexts for good). Activity lock held.
void note_legacy_done(CUcontext context, std::uint64_t queued) noexcept {
  if (queued == UINT64_MAX || g_legacy_in_many_contexts.load(std::memory_order_seq_cst)) return;
  const CUcontext legacy = g_legacy_context.load(std::memory_order_seq_cst);
  if (legacy != nullptr && legacy != context) return;
  if (queued > g_legacy_submissions_done.load(std::memory_order_relaxed))
    g_legacy_submissions_done.store(queued, std::memory_order_seq_cst);
}

void remember(CUstream stream, StreamRecord* record) noexcept {
  t_stream_records[t_stream_records_next++ % 4] = {stream, record,
                                                   g_stream_records_generation.load(std::memory_order_acquire)};
}

}  // namespace

StreamRecord* become_active(StreamRecord* record) noexcept {
  // Work captured into a graph runs when the graph is launched (cuGraphLaunch counts then).
  if (capturing(record->stream)) {
    end_stream_work(record);
    return nullptr;
  }
  Activity& a = activity();
  std::unique_lock<SpinLock> guard(a.lock);
  if (record->word.load(std::memory_order_acquire) & kStreamActive) return record;  // another thread joined it
  if (record->joining) {
    // Another thread is joining this stream: this submission must not be queued before that join.
    const std::uint64_t serial = record->serial;
    guard.unlock();
    while (!(record->word.load(std::memory_order_acquire) & kStreamActive) && record->serial == serial)
      std::this_thread::yield();
    return record;
  }
  // Counted first (seq_cst), joined second: a free that still reads "ordered" happened before the join's
  // events were recorded, so they cover its block's last user (router/stream_activity.h).
  // A non-blocking stream that starts work while nothing else counts may become solo: counted with
  // kSoloPending in the same step, it becomes solo (kSolo) once its join below is queued, unless other
  // work came first (cancel_pending_solo). Any other stream that starts work ends a solo.
  const bool may_solo = !record->blocking && !record->retiring && solo_may_begin(a);
  const std::uint64_t one = record->blocking ? kBlockingOne : 1;
  std::uint64_t before = g_unordered.load(std::memory_order_seq_cst);
  bool solo = false;
  do {
    solo = may_solo && before == 0;
  } while (!g_unordered.compare_exchange_weak(before, before + one + (solo ? kSoloPending : 0), std::memory_order_seq_cst));
  bool joined = true;
  if (solo) {
    a.solo = record;
    if (!legacy_work_allows_solo(record->context)) cancel_pending_solo(a);
  } else {
    cancel_pending_solo(a);
    end_solo(a, &SoloCounts::ended_by_stream);
    // A block reused at once beside the lone stream may be this stream's next: its work waits for that
    // stream's, until a poll finds solo's end event complete (settle_solo).
    if (a.solo_owed) joined = wait_for_solo_end(a, record->stream, record->context);
  }
  // The join: wait for the legacy stream (a blocking stream does so by itself). During another stream's
  // capture the legacy stream must not be touched; its earlier work is then not waited for
  // (docs/free-safety.md, "Limits"). A legacy stream that has finished its work needs no wait: the
  // query comes after the count, so the last user of a block a free reused at once (it read "ordered",
  // so before the count) was queued before the query, and is done. Legacy work queued after the query
  // is no such user: its blocks' frees read "unordered" and are fenced. With a stream per thread and
  // no legacy work (alloc_bench; servers with a stream per request) this halves the driver calls a
  // launch makes under the activity lock (tenth session's profile: 27% of 16 threads' time at 1 MiB
  // waited for that lock in this function).
  // The question is asked outside the lock: a cuStreamQuery took 1.5 us on the H200, and 16 threads that
  // each activate a stream every 64 pairs waited 66 us an activation for the lock at 256 B (36% of their
  // time, fourteenth session). The count, not the lock, is what makes the answer exact. Meanwhile the
  // stream is `joining`: another thread's submission to it waits above, so no work is queued on it
  // before its join, and untrack_stream does not recycle it.
  // Nor is it asked again while the work has stayed unordered since a join that found the legacy stream
  // of this context done: every block reused at once was freed before that join's count (the work was
  // unordered from that count on, and the joined stream counted until its join ended), so its last
  // user was queued before that question and was done then. The epoch, read after this join's count,
  // tells: every uncount that may leave the work ordered bumps it first (uncount). With a stream per
  // thread, 16 threads' activations mostly fall in such stretches (alloc_bench on the H200, 1 MiB: 1,645
  // transitions to ordered in a process of 13,000 launches, docs/perf-notes.md, sixteenth session).
  // Nor when every legacy submission begun so far is known done (legacy_work_done, read after this
  // join's count): a block reused at once had its last legacy user begun before its free, so before the
  // count. With a stream per thread and no legacy work, the work turns ordered between most launches at
  // a launch every 1,024 pairs (the epoch moves), and each activating launch asked again: a cuStreamQuery
  // beside the probe's write, both in the driver's lock that the other threads' launches queue on.
  if (!record->blocking && g_active_captures.load(std::memory_order_acquire) == 0) {
    const std::uint64_t epoch = g_ordered_epoch.load(std::memory_order_seq_cst);
    if ((a.legacy_done_context != record->context || a.legacy_done_epoch != epoch) &&
        !(legacy_counted() && legacy_work_done())) {
      record->joining = true;
      guard.unlock();
      // Counted before the question: when the stream answers idle, these submissions are done
      // (legacy_work_done), provided the legacy work is all in this context.
      const std::uint64_t queued = legacy_submissions_queued();
      const bool caught_up = legacy_stream_caught_up(record->context);
      guard.lock();
      record->joining = false;
      if (!caught_up) {
        joined = wait_for(record, record->context, CU_STREAM_LEGACY);
      } else {
        if (a.legacy_done_context != record->context || a.legacy_done_epoch < epoch) {
          a.legacy_done_context = record->context;  // a later join may have stored a newer epoch meanwhile
          a.legacy_done_epoch = epoch;
        }
        note_legacy_done(record->context, queued);
      }
    }
  }
  // And every other active *blocking* stream. An active non-blocking stream needs no wait: a block reused
  // at once was freed while no non-blocking stream was active (else it was fenced), so such a stream
  // became active after that free and none of its work is a prior user of the block. Fenced blocks need
  // no join at all beyond the legacy stream (their fence covered every stream active at the close).
  // With a stream per thread this is what keeps an activation at three driver calls instead of two per
  // active stream (alloc_bench, 16 threads with a stream each: ~33 calls a launch, under this lock).
  // (Read after the legacy question: a blocking stream that became active meanwhile is waited for too,
  // which only orders more; one that went idle meanwhile had finished its work.)
  for (StreamRecord* other : a.active) {
    if (other == record || other->retiring || !other->blocking) continue;
    joined = wait_for(record, other->context, other->stream) && joined;
  }
  if (!joined) end_total_order_for_good("a stream could not be joined to the others");
  // Solo begins once the join is queued, unless other work cancelled it meanwhile (the legacy question
  // was asked outside the lock) or the stream is being destroyed.
  if (a.solo == record && (g_unordered.load(std::memory_order_seq_cst) & kSoloPending)) {
    if (joined && !record->retiring) {
      begin_pending_solo(a);
    } else {
      cancel_pending_solo(a);
    }
  }
  record->word.fetch_or(kStreamActive, std::memory_order_seq_cst);
  ++a.activations;
  try {
    a.active.push_back(record);
  } catch (...) {
    // Not probed, so never idle again: it stays counted, which is safe. A batch fence can no longer
    // find it among the active streams: batches take the device-wide fence from now on.
    end_total_order_for_good("no host memory to track an active stream");
  }
  log_first_activation(record);
  t_probe_after_submission = record;
  return record;
}

// The stream just became active, or was found idle since its last probe, and the submission to it is
// queued: its probe is queued now, in the submitting call, rather than by the first poll after it. That
// poll ran in a free, which then paid a cuStreamQuery (the work had just been queued: busy) and the
// probe, ~2-5 us on the H200, under the activity lock; the later polls now read the probe's word (or
// ask its event). As the poll does: only with no submission in flight (else the next poll probes), and
// the stamp read before the probe, so a submission begun since keeps the stream active. Costs a launch
// one probe when its stream had gone idle, beside the join's query at an activation (and record and
// wait, with legacy work left); a launch loop that keeps its stream busy pays nothing.
void probe_after_submission(StreamRecord* record) noexcept {
  t_probe_after_submission = nullptr;
  if (g_active_captures.load(std::memory_order_acquire) > 0) return;  // no record may touch a capture
  Activity& a = activity();
  std::unique_lock<SpinLock> guard(a.lock, std::try_to_lock);
  if (!guard.owns_lock()) return;  // a poll or another activation is busy with the streams: it can wait
  const std::uint64_t word = record->word.load(std::memory_order_acquire);
  if (!(word & kStreamActive) || record->retiring || (word & kInFlightMask) != 0) return;
  // A probe queued since the stream was found idle (by another submission) covers this one only if
  // nothing was submitted after it; a stale one is replaced (the poll would do the same).
  if (record->probing && word == record->probe_stamp) return;
  record->probe_wanted.store(false, std::memory_order_relaxed);
  ScopedContext scope(record->context);
  if (!scope.ok()) return;
  if (!prepare_probe_word(record->probe_word, record->context)) {
    start_probe(record, word, /*event=*/true);  // 0.8 us, under the lock
    return;
  }
  // A word's write costs the launch 2.7-2.9 us on the H200, an event's record 0.8 (fourteenth session):
  // queued without the lock, so threads that activate their streams at once do not wait for each
  // other's. The probe is published first: until the write lands, its word reads "not landed".
  const std::uint32_t value = publish_word_probe(record, word);
  const CUstream stream = record->stream;
  const CUdeviceptr device = record->probe_word.device;
  guard.unlock();
  if (write_probe_value(stream, device, value)) return;
  // Refused (probes are events from now on): an event probe instead, unless a poll replaced ours.
  guard.lock();
  if (record->probing && record->probe_by_word && record->probe_word.value == value)
    start_probe(record, word, /*event=*/true);
}

StreamRecord* begin_stream_work_uncached(CUstream stream) noexcept {
  if (stream == CU_STREAM_PER_THREAD || stream == nullptr) {
    // One handle names a different blocking stream on every thread, and gpushim cannot record a probe on
    // another thread's: such a program stays fenced (the legacy-stream fence covers these streams).
    end_total_order_for_good("work on a per-thread default stream");
    return nullptr;
  }
  Activity& a = activity();
  StreamRecord* record = nullptr;
  {
    std::lock_guard<SpinLock> guard(a.lock);
    auto it = a.by_stream.find(stream);
    if (it != a.by_stream.end()) {
      record = it->second;
    } else {
      // A stream gpushim did not see created (a green context's, or one made before it loaded).
      const RealDriver& driver = real_driver();
      CUcontext context = nullptr;
      unsigned int flags = CU_STREAM_NON_BLOCKING;
      if (driver.cuStreamGetCtx(stream, &context) != CUDA_SUCCESS) return nullptr;  // the driver will refuse it
      if (driver.cuStreamGetFlags(stream, &flags) != CUDA_SUCCESS) flags = CU_STREAM_NON_BLOCKING;
      record = register_locked(stream, context, !(flags & CU_STREAM_NON_BLOCKING));
      if (!record) {
        end_total_order_for_good("no host memory to track a stream");
        return nullptr;
      }
    }
  }
  remember(stream, record);
  const std::uint64_t before = record->word.fetch_add(kSubmissionOne + kInFlightOne, std::memory_order_acq_rel);
  return (before & kStreamActive) ? submitting_to_active(record) : become_active(record);
}

void track_stream(CUstream stream, unsigned int flags) noexcept {
  CUcontext context = nullptr;
  if (real_driver().cuStreamGetCtx(stream, &context) != CUDA_SUCCESS) return;  // found on first work instead
  Activity& a = activity();
  std::lock_guard<SpinLock> guard(a.lock);
  register_locked(stream, context, !(flags & CU_STREAM_NON_BLOCKING));
}

void untrack_stream(CUstream stream) noexcept {
  Activity& a = activity();
  {
    std::lock_guard<SpinLock> guard(a.lock);
    auto it = a.by_stream.find(stream);
    if (it != a.by_stream.end()) {
      StreamRecord* record = it->second;
      a.by_stream.erase(it);
      // Solo's end event must be recorded while the stream still exists.
      if (a.solo == record) {
        cancel_pending_solo(a);
        end_solo(a, &SoloCounts::ended_by_stream);
      }
      if (!(record->word.load(std::memory_order_acquire) & kStreamActive) && !record->joining) {
        recycle(record);
      } else {
        // Its queued work still runs after the destroy (or its joining thread is about to make it
        // active): it stays counted until a probe recorded now completes (no probe possible during a
        // capture: then it stays counted for good, safely). A probe recorded earlier may predate its
        // last work: always record a fresh one.
        record->retiring = true;
        record->probing = false;
        if (g_active_captures.load(std::memory_order_acquire) == 0) {
          ScopedContext scope(record->context);
          if (scope.ok()) start_probe(record, record->word.load(std::memory_order_acquire), /*event=*/true);
        }
      }
    }
  }
  g_stream_records_generation.fetch_add(1, std::memory_order_acq_rel);
}

namespace {

// True when a poll found the stream idle and nothing was submitted to it since (`word`: its word now).
// Activity lock held.
bool still_idle(const StreamRecord* record, std::uint64_t word) noexcept {
  return !record->retiring && word == record->idle_stamp;
}
bool still_idle(const StreamRecord* record) noexcept {
  return still_idle(record, record->word.load(std::memory_order_acquire));
}

// The stream's submissions counted in `stamp` (a word read with none in flight) are done: a probe queued
// after them landed, or the stream answered idle. Marked batches read it (stream_passed). Activity lock
// held.
void note_done(StreamRecord* record, std::uint64_t stamp) noexcept {
  const std::uint64_t done = stamp >> kSubmissionShift;
  if (done > record->done_submissions.load(std::memory_order_relaxed))
    record->done_submissions.store(done, std::memory_order_release);
}

// A poll found the stream idle at `stamp` (its word then). It stays active unless the idle streams leave
// together below; its next submission probes it (StreamRecord::probe_wanted). Activity lock held.
void note_idle(StreamRecord* record, std::uint64_t stamp) noexcept {
  note_done(record, stamp);
  record->idle_stamp = stamp;
  record->idle_since_ns = monotonic_ns();
  record->probe_wanted.store(true, std::memory_order_relaxed);
}

// True when the active streams that are still idle leaving together would make the work totally
// ordered. Activity lock held.
bool idle_streams_would_order_the_work(const Activity& a) noexcept {
  std::uint64_t remaining = g_unordered.load(std::memory_order_seq_cst);
  for (const StreamRecord* record : a.active)
    if (still_idle(record))
      remaining -= (record->blocking ? kBlockingOne : 1) + (record == a.solo ? remaining & kSoloBits : 0);
  return totally_ordered(remaining);
}

// How long the other active streams must have been idle before a lone busy stream becomes solo at a poll:
// long enough that streams which take turns (16 threads, a stream each, a launch every 64 pairs: idle
// for microseconds between launches) never start and end a solo at every poll, short against a stream
// that worked once and stays idle (cuDNN's, at its handle's creation).
constexpr std::uint64_t kSoloQuietNs = 10'000'000;

// Solo begins at a poll too, not only at a join: when one non-blocking stream is busy and every other
// active stream has been idle for kSoloQuietNs. Otherwise a program whose one stream never idles (a
// decoding loop that never synchronizes) would stay fenced for good after another stream worked once.
// As at a join: pending first, then no legacy submission in flight, the legacy work in the lone stream's
// context and done (the join's question: legacy work queued since the lone stream's join is not ordered
// with it), then the idle streams leave (each only if nothing was submitted to it since), and solo
// begins only if the lone stream is all that is left. The epoch is bumped: a later join asks the legacy
// stream again. Activity lock held; one driver call (the legacy question).
void begin_solo_beside_quiet_streams(Activity& a) noexcept {
  if (!solo_may_begin(a)) return;
  StreamRecord* lone = nullptr;
  std::uint64_t now = 0;  // read only once an idle stream needs it: most polls return before
  for (StreamRecord* record : a.active) {
    if (record->retiring) return;
    if (still_idle(record)) {
      if (!now) now = monotonic_ns();
      if (now - record->idle_since_ns < kSoloQuietNs) return;
      continue;
    }
    if (lone || record->blocking) return;
    lone = record;
  }
  if (!lone) return;
  std::uint64_t unordered = g_unordered.load(std::memory_order_seq_cst);
  if ((unordered & (kSoloBits | kUnorderedForever)) != 0 ||
      !g_unordered.compare_exchange_strong(unordered, unordered + kSoloPending, std::memory_order_seq_cst))
    return;
  a.solo = lone;
  if (!legacy_work_allows_solo(lone->context) || !legacy_stream_caught_up(lone->context)) {
    cancel_pending_solo(a);
    return;
  }
  bool turned_ordered = false;  // cannot: the lone stream stays counted
  for (std::size_t j = 0; j < a.active.size();) {
    StreamRecord* record = a.active[j];
    if (record == lone || !leave_active_if_unchanged(a, j, record->idle_stamp, &turned_ordered)) ++j;
  }
  if (a.active.size() != 1 || g_unordered.load(std::memory_order_seq_cst) != (1 | kSoloPending)) {
    cancel_pending_solo(a);
    return;
  }
  g_ordered_epoch.fetch_add(1, std::memory_order_seq_cst);
  begin_pending_solo(a);
}

}  // namespace

bool poll_stream_activity(TurnedOrderedHook on_turned_ordered, void* arg, BusyStreams busy) noexcept {
  Activity& a = activity();
  if (g_unordered.load(std::memory_order_relaxed) == 0) return false;
  if (g_active_captures.load(std::memory_order_acquire) > 0) return false;  // no record may touch a capture
  std::unique_lock<SpinLock> guard(a.lock, std::try_to_lock);
  if (!guard.owns_lock()) return false;
  bool turned_ordered = false;
  const RealDriver& driver = real_driver();
  int calls = 0;
  // Once solo's end event has completed, joins and legacy work need not wait for it.
  if (a.solo_owed) {
    ++calls;
    if (driver.cuEventQuery(a.solo_end) != CUDA_ERROR_NOT_READY) settle_solo(a);
  }
  std::size_t i = 0;
  while (i < a.active.size() && calls < kMaxDriverCallsPerPoll) {
    StreamRecord* record = a.active[i];
    const std::uint64_t word = record->word.load(std::memory_order_acquire);
    // Found idle before, and nothing submitted since: no driver call.
    if (still_idle(record, word)) {
      ++i;
      continue;
    }
    // A probe with work queued after it can no longer prove the stream idle: once it has landed, ask
    // the stream itself. (The probe recorded at a stream's first launch goes stale when more launches
    // follow, as a library that queues several kernels at once does: waiting for it cost the CNN of
    // bench/torch_cnn.py a poll round, 2 more fenced frees and 20 MiB of peak on the H200.) Until it has
    // landed the stream is still busy with work queued before it, which is all a query or a fresh probe
    // could say: a thread that launches between every pair made both, two driver calls, in every poll.
    if (record->probing && !record->retiring && word != record->probe_stamp) {
      if (!probe_landed(record, &calls)) {
        ++i;
        continue;
      }
      record->probing = false;
      note_done(record, record->probe_stamp);  // the work before the probe, at least
    }
    if (!record->probing) {
      // A submission in flight may be queued after a probe recorded now: try again at the next poll.
      if (!record->retiring && (word & kInFlightMask) == 0) {
        ScopedContext scope(record->context);
        // Already idle: what a completed probe recorded now would say, one poll (and one record) sooner.
        ++calls;
        if (scope.ok() && driver.cuStreamQuery(record->stream) == CUDA_SUCCESS) {
          note_idle(record, word);
          ++i;
          continue;
        }
        if (scope.ok() && busy == BusyStreams::probe) {
          ++calls;
          start_probe(record, word);
        }
      }
      ++i;
      continue;
    }
    if (!probe_landed(record, &calls)) {
      ++i;
      continue;
    }
    record->probing = false;
    if (record->retiring) {
      if (uncount(a, record)) turned_ordered = true;
      a.active[i] = a.active.back();
      a.active.pop_back();
      recycle(record);
      continue;
    }
    // Idle if nothing was submitted since the probe (the word still reads its stamp).
    note_idle(record, record->probe_stamp);
    ++i;
  }
  // The streams not asked this time (the call budget ran out) are asked first at the next poll.
  std::rotate(a.active.begin(), a.active.begin() + static_cast<std::ptrdiff_t>(i), a.active.end());
  // Idle streams leave the active set together, and only when that orders the work. One leaving alone
  // while others stay active orders nothing, and its next launch pays a join under the activity lock
  // (two driver calls then; a query since, while the legacy stream is done): 16 threads with a stream
  // each, whose streams went idle between launches, spent 38% of their wall-clock time waiting for
  // that lock at 1 MiB (H200). Staying active costs a fence one event more, on a stream with nothing
  // queued.
  if (idle_streams_would_order_the_work(a)) {
    for (std::size_t j = 0; j < a.active.size();) {
      StreamRecord* record = a.active[j];
      if (!still_idle(record) || !leave_active_if_unchanged(a, j, record->idle_stamp, &turned_ordered))
        ++j;
    }
  } else if (calls < kMaxDriverCallsPerPoll) {
    begin_solo_beside_quiet_streams(a);
  }
  if (turned_ordered && on_turned_ordered) on_turned_ordered(arg);  // the lock still held
  return turned_ordered;
}

ActiveStreamWalk visit_active_streams(ActiveStreamVisitor visit, void* arg) noexcept {
  Activity& a = activity();
  std::lock_guard<SpinLock> guard(a.lock);
  if (g_unordered_for_good.load(std::memory_order_seq_cst)) return ActiveStreamWalk::incomplete;
  for (const StreamRecord* record : a.active)
    if (record->retiring) return ActiveStreamWalk::incomplete;
  if (a.active.empty()) return ActiveStreamWalk::none_active;
  for (const StreamRecord* record : a.active)
    if (!visit({record->stream, record->context, record->blocking, record->serial,
                record->word.load(std::memory_order_acquire)},
               arg))
      return ActiveStreamWalk::stopped;
  return ActiveStreamWalk::visited;
}

bool mark_active_streams(std::vector<StreamMark>* marks) noexcept {
  marks->clear();
  if (!legacy_counted()) return false;
  Activity& a = activity();
  // Legacy work found done here (a context set), noted under the walk's hold of the lock below, not a
  // hold of its own.
  CUcontext legacy_context = nullptr;
  std::uint64_t legacy_queued = 0;
  if (!legacy_work_done()) {
    // Legacy work began since a join last found the legacy stream done (joins skip the question while the
    // work stays unordered): ask it now, outside the activity lock, once per close, as the fence queue's
    // fence does. Not during a capture: touching the legacy stream would invalidate a global one.
    legacy_context = g_legacy_context.load(std::memory_order_seq_cst);
    legacy_queued = legacy_submissions_queued();
    if (legacy_queued == UINT64_MAX || legacy_context == nullptr ||
        g_active_captures.load(std::memory_order_acquire) > 0 || !legacy_stream_caught_up(legacy_context))
      return false;
  }
  // Room for the marks before the lock, a spin lock that every activation takes. The active streams are
  // counted in g_unordered (non-blocking ones in its low bits, blocking ones in its high word): a hint,
  // since the set may grow before the lock is taken, and then the room doubles and it tries again.
  const std::uint64_t unordered = g_unordered.load(std::memory_order_relaxed);
  std::size_t room = static_cast<std::size_t>((unordered & (kUnorderedForever - 1)) + (unordered >> 32)) + 2;
  for (;; room *= 2) {
    try {
      marks->reserve(room);
    } catch (...) {
      return false;
    }
    std::lock_guard<SpinLock> guard(a.lock);
    if (legacy_context) note_legacy_done(legacy_context, legacy_queued);  // again on a retry: it only raises
    if (g_unordered_for_good.load(std::memory_order_seq_cst) || !legacy_work_done()) return false;
    if (a.active.size() > marks->capacity()) continue;
    for (const StreamRecord* record : a.active) {
      if (record->retiring) return false;  // its work may outlive the stream: no poll marks it done
      marks->push_back({record, record->serial.load(std::memory_order_relaxed),
                        record->word.load(std::memory_order_seq_cst) >> kSubmissionShift});
    }
    return true;
  }
}

bool order_legacy_after_destroyed_streams() noexcept {
  Activity& a = activity();
  std::lock_guard<SpinLock> guard(a.lock);
  bool all = true;
  for (const StreamRecord* record : a.active) {
    if (!record->retiring) continue;
    // A retiring record's probe is never recorded again (poll_stream_activity retires it once complete).
    all = record->probing && real_driver().cuStreamWaitEvent(CU_STREAM_LEGACY, record->probe, 0) == CUDA_SUCCESS &&
          all;
  }
  return all;
}

// Only where a cuMemFree'd block may be reused at once: a driver-backed backend (passthrough, the
// driver's pool) gains nothing from solo, and its ordering (the legacy stream waiting for the lone
// stream when solo ends) would only cost the program concurrency. Marked batches likewise (their blocks
// go back to their thread's list, which such a backend has none of), and not under
// GPUSHIM_FREE_FENCE=always (every block waits for an event) or GPUSHIM_THREAD_FENCES=0.
int read_legacy_rules() noexcept {
  const Settings& s = settings();
  const bool driver_backed = chosen_backend(s).traits.driver_backed;
  const bool solo = s.free_fence == Settings::FreeFence::automatic && !driver_backed;
  const bool marks = s.free_fence != Settings::FreeFence::always && s.thread_fences && !driver_backed;
  const int rules = (solo ? kSoloAllowed : 0) | (solo || marks ? kLegacyCounted : 0);
  g_legacy_rules.store(rules, std::memory_order_relaxed);
  return rules;
}

LegacyStripe* assign_legacy_stripe() noexcept {
  static std::atomic<unsigned> next{0};
  t_legacy_stripe = &g_legacy_submissions[next.fetch_add(1, std::memory_order_relaxed) % kLegacyStripes];
  return t_legacy_stripe;
}

// Legacy work from a second context: solo never begins again (a lone stream's join waits for its own
// context's legacy stream only), and while a solo's end is owed this context's legacy stream waits for
// it as well (and so does every later legacy submission, until a poll settles it).
void check_legacy_context() noexcept {
  if (g_legacy_in_many_contexts.load(std::memory_order_relaxed)) return;
  CUcontext context = nullptr;
  if (real_driver().cuCtxGetCurrent(&context) != CUDA_SUCCESS || context == nullptr) return;
  // The plain load first: every legacy launch asks, and it is nearly always the same context.
  if (g_legacy_context.load(std::memory_order_relaxed) == context || legacy_context_is(context)) return;
  legacy_work_beside_solo();  // a second context: the slow path notes it, ends solo, waits if owed
}

// Legacy work while solo is pending, under way, or owed (stream_activity.h), or legacy work from a second
// context: a pending solo does not begin, a solo ends, and the legacy stream waits for its end event
// before this work is queued. In one context that wait covers all later legacy work, so kLegacyBehindSolo
// goes; with legacy work in several contexts, every submission waits in its own (and in the lone
// stream's) until a poll settles solo.
void legacy_work_beside_solo() noexcept {
  Activity& a = activity();
  CUcontext context = nullptr;
  if (real_driver().cuCtxGetCurrent(&context) != CUDA_SUCCESS) context = nullptr;
  std::lock_guard<SpinLock> guard(a.lock);
  const CUcontext solo_context = g_legacy_context.load(std::memory_order_seq_cst);
  if (context && context != solo_context) g_legacy_in_many_contexts.store(true, std::memory_order_seq_cst);
  const bool many_contexts = g_legacy_in_many_contexts.load(std::memory_order_seq_cst);
  cancel_pending_solo(a);
  end_solo(a, &SoloCounts::ended_by_legacy);
  if (many_contexts && a.solo_owed && !(g_unordered.load(std::memory_order_seq_cst) & kLegacyBehindSolo))
    g_unordered.fetch_add(kLegacyBehindSolo, std::memory_order_seq_cst);
  if (!(g_unordered.load(std::memory_order_seq_cst) & kLegacyBehindSolo)) return;
  bool waited = context && wait_for_solo_end(a, CU_STREAM_LEGACY, context);
  if (solo_context != context) waited = wait_for_solo_end(a, CU_STREAM_LEGACY, solo_context) && waited;
  if (!waited) real_driver().cuEventSynchronize(a.solo_end);
  // Queued (or waited for) before the bit goes: legacy work that reads g_unordered without it comes after.
  if (!many_contexts) g_unordered.fetch_sub(kLegacyBehindSolo, std::memory_order_seq_cst);
}

void before_capture_begins() noexcept {
  g_captures_starting.fetch_add(1, std::memory_order_seq_cst);
  Activity& a = activity();
  std::lock_guard<SpinLock> guard(a.lock);
  cancel_pending_solo(a);
  end_solo(a, &SoloCounts::ended_by_capture);
}

void capture_began() noexcept { g_captures_starting.fetch_sub(1, std::memory_order_seq_cst); }

SoloCounts solo_counts() noexcept {
  Activity& a = activity();
  std::lock_guard<SpinLock> guard(a.lock);
  return a.solo_counts;
}

std::uint64_t stream_activations() noexcept {
  Activity& a = activity();
  std::lock_guard<SpinLock> guard(a.lock);
  return a.activations;
}

void reset_stream_activity_after_fork() noexcept {
  // The parent's streams, contexts and events mean nothing in the child; its records leak (small).
  Activity& a = activity();
  new (&a.lock) SpinLock();
  a.by_stream.clear();
  a.active.clear();
  a.join_events.clear();
  a.free_records = nullptr;
  reset_probe_words_after_fork();
  g_unordered.store(g_unordered.load() & kUnorderedForever);
  a.solo = nullptr;
  a.solo_end = nullptr;
  a.solo_owed = false;
  for (LegacyStripe& stripe : g_legacy_submissions) {
    stripe.begun.store(0);
    stripe.ended.store(0);
  }
  g_legacy_submissions_done.store(0);
  g_legacy_context.store(nullptr);
  g_captures_starting.store(0);
  g_ordered_epoch.fetch_add(1);
  a.legacy_done_context = nullptr;
  g_stream_records_generation.fetch_add(1);
}

}  // namespace gpushim::router
