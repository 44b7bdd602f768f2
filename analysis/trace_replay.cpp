#include "analysis/trace_replay.h"

#include <chrono>
#include <deque>
#include <iterator>
#include <list>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <tuple>
#include <unordered_map>

#include "providers/host_provider.h"

namespace gpushim::tracing {
namespace {

constexpr std::uint64_t kProgressEvery = 1u << 20;  // events between progress reports

const char* no_environment(const char*, void*) { return nullptr; }

void replay_events(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress,
                   const GpuLag& lag, ReplayResult* result);

struct DeviceReplay {
  std::unique_ptr<HostProvider> provider;
  std::unique_ptr<Allocator> allocator;
};

}  // namespace

std::vector<const BackendInfo*> replayable_backends() {
  std::vector<const BackendInfo*> out;
  for (const BackendInfo& info : backend_table())
    if (info.factory) out.push_back(&info);
  return out;
}

ReplayResult replay_trace(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress,
                          const GpuLag& lag) {
  ReplayResult r;
  r.backend = backend.name;
  std::set<std::int32_t> named;
  for (const TraceEvent& e : trace.events)
    if (is_alloc(e.kind)) named.insert(e.device);
  if (named.size() > kMaxReplayDevices) {
    r.refusal = "the trace allocates on " + std::to_string(named.size()) + " devices; replay simulates at most " +
                std::to_string(kMaxReplayDevices);
    return r;
  }
  try {
    replay_events(trace, backend, progress, lag, &r);
  } catch (const std::bad_alloc&) {
    // The host, not the backend, ran out (an address-space limit, a small machine): say so rather than
    // count it as the backend's failure. What was measured up to here stands.
    r.host_out_of_memory = true;
  }
  r.fragmentation = r.peak_live ? double(r.peak_reserved) / double(r.peak_live) : 0;
  return r;
}

namespace {

// CU_STREAM_LEGACY and CU_STREAM_PER_THREAD, as the router reads stream handles (router/router.cpp):
// an async call on stream 0 means the legacy stream, and async frees on the per-thread default stream
// take the fenced cuMemFree path, since that one handle names a different stream on every thread.
constexpr std::uint64_t kLegacyStream = 0x1;
constexpr std::uint64_t kPerThreadStream = 0x2;
constexpr std::uint64_t kNsPerMicrosecond = 1000;

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) { return a > ~b ? ~std::uint64_t{0} : a + b; }
std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) {
  return b && a > ~std::uint64_t{0} / b ? ~std::uint64_t{0} : a * b;
}

struct Block {
  void* pointer;
  std::uint64_t size;          // what the program asked for: counts as live
  std::uint64_t backend_size;  // what the backend was asked for, and is given back
  std::int32_t device;
  StreamHandle stream;
};

// Blocks the program freed that the GPU may still be using under a GpuLag: in free order, which is also
// the order they become reusable (event indices and trace times only grow). An async-freed block also
// sits in its stream's list, from which an allocation on that stream of the same rounded size takes it
// back at once, as gpushim's per-stream free lists do (docs/free-safety.md).
class LaggedFrees {
 public:
  explicit LaggedFrees(const GpuLag& lag)
      : events_(lag.events), ns_(saturating_mul(lag.microseconds, kNsPerMicrosecond)) {}

  // `call`: the free's index among the trace's allocation/free calls; `time_ns`: its trace time.
  void add(const Block& block, std::uint64_t call, std::uint64_t time_ns, bool async, std::uint64_t free_stream) {
    const bool on_stream = async && free_stream != kPerThreadStream;
    const StreamKey key{block.device, on_stream ? stream_of(free_stream) : 0, rounded(block.backend_size)};
    waiting_.push_back(Waiting{block, saturating_add(call, saturating_add(events_, 1)),
                               saturating_add(time_ns, ns_), on_stream, key});
    if (on_stream) by_stream_[key].push_back(std::prev(waiting_.end()));
    bytes_ += block.size;
  }

  // Hands each block the GPU has passed by call `call` at `time_ns` to `give_back`, oldest first.
  template <typename GiveBack>
  void release_due(std::uint64_t call, std::uint64_t time_ns, GiveBack&& give_back) {
    while (!waiting_.empty() && waiting_.front().ready_call <= call && waiting_.front().ready_ns <= time_ns) {
      auto it = waiting_.begin();
      if (it->on_stream) drop_from_stream(it->key);  // the stream list's oldest: both are in free order
      bytes_ -= it->block.size;
      Block block = it->block;
      waiting_.erase(it);
      give_back(block);
    }
  }

  // A waiting block freed on `stream` that an async allocation of `size` there may take at once.
  bool take_on_stream(std::int32_t device, std::uint64_t stream, std::uint64_t size, Block* out) {
    if (by_stream_.empty()) return false;
    auto list = by_stream_.find(StreamKey{device, stream_of(stream), rounded(size)});
    if (list == by_stream_.end()) return false;
    auto it = list->second.front();
    list->second.pop_front();
    if (list->second.empty()) by_stream_.erase(list);
    bytes_ -= it->block.size;
    *out = it->block;
    waiting_.erase(it);
    return true;
  }

  template <typename GiveBack>
  void release_all(GiveBack&& give_back) {
    release_due(~std::uint64_t{0}, ~std::uint64_t{0}, give_back);
  }

  std::uint64_t bytes() const { return bytes_; }

 private:
  struct StreamKey {
    std::int32_t device;
    std::uint64_t stream;
    std::uint64_t rounded_size;
    bool operator<(const StreamKey& o) const {
      return std::tie(device, stream, rounded_size) < std::tie(o.device, o.stream, o.rounded_size);
    }
  };
  struct Waiting {
    Block block;
    std::uint64_t ready_call;  // reusable from this allocation/free call on
    std::uint64_t ready_ns;    // and from this trace time on
    bool on_stream;
    StreamKey key;
  };

  static std::uint64_t stream_of(std::uint64_t stream) { return stream ? stream : kLegacyStream; }
  // The router's block size: the request rounded up to the backends' alignment.
  static std::uint64_t rounded(std::uint64_t size) {
    return saturating_add(size, kMinAlignment - 1) / kMinAlignment * kMinAlignment;
  }
  void drop_from_stream(const StreamKey& key) {
    auto list = by_stream_.find(key);
    list->second.pop_front();
    if (list->second.empty()) by_stream_.erase(list);
  }

  const std::uint64_t events_;
  const std::uint64_t ns_;
  std::list<Waiting> waiting_;
  std::map<StreamKey, std::deque<std::list<Waiting>::iterator>> by_stream_;
  std::uint64_t bytes_ = 0;
};

void replay_events(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress,
                   const GpuLag& lag, ReplayResult* result) {
  ReplayResult& r = *result;
  // Defaults only: a replay compares algorithms, not the settings of the run that was traced.
  const Settings settings = parse_settings(&no_environment, nullptr);
  std::map<std::int32_t, DeviceReplay> devices;
  std::unordered_map<std::uint64_t, Block> live;  // by block_key()
  LaggedFrees lagged(lag);
  std::uint64_t live_bytes = 0, reserved = 0;
  std::chrono::nanoseconds spent{0};
  using clock = std::chrono::steady_clock;

  auto device = [&](std::int32_t d) -> DeviceReplay* {
    auto it = devices.find(d);
    if (it != devices.end()) return it->second.allocator ? &it->second : nullptr;
    DeviceReplay& dr = devices[d];
    dr.provider = std::make_unique<HostProvider>();
    dr.allocator = backend.factory(*dr.provider, settings);
    return dr.allocator ? &dr : nullptr;
  };
  auto reserved_now = [&] {
    std::uint64_t sum = 0;
    for (auto& [d, dr] : devices) sum += dr.provider->bytes_mapped();
    return sum;
  };
  auto give_back = [&](const Block& block) {
    DeviceReplay* dr = device(block.device);
    auto t0 = clock::now();
    dr->allocator->deallocate(block.pointer, block.backend_size, block.stream);
    spent += clock::now() - t0;
    r.operations++;
  };
  auto release = [&](std::unordered_map<std::uint64_t, Block>::iterator it) {
    give_back(it->second);
    live_bytes -= it->second.size;
    live.erase(it);
  };
  auto became_live = [&](const TraceEvent& e, const Block& block) {
    live.emplace(block_key(e), block);
    live_bytes += block.size;
    if (live_bytes > r.peak_live) r.peak_live = live_bytes;
    reserved = reserved_now();
    if (reserved > r.peak_reserved) r.peak_reserved = reserved;
  };

  std::uint64_t done = 0;
  std::uint64_t call = 0;  // index of this allocation/free call among the trace's: the lag counts these
  for (const TraceEvent& e : trace.events) {
    if (progress && ++done % kProgressEvery == 0) progress(done, trace.events.size());
    bool alloc = is_alloc(e.kind);
    bool free = is_free(e.kind);
    if (!alloc && !free) continue;
    const std::uint64_t this_call = call++;
    lagged.release_due(this_call, e.time_ns, give_back);
    auto it = live.find(block_key(e));
    if (free) {
      if (it == live.end()) continue;
      lagged.add(it->second, this_call, e.time_ns, e.kind == EventKind::free_async, e.stream);
      live_bytes -= it->second.size;
      live.erase(it);
      // Anything due by the next call is due now: without a lag the block goes back here, at its free,
      // so the backend sees the very calls, in the very order, of a replay without the lag model.
      lagged.release_due(this_call + 1, e.time_ns, give_back);
      continue;
    }
    if (it != live.end()) release(it);  // a free the trace lost: the address was handed out again
    Block reused;
    const bool taken = e.kind == EventKind::alloc_async && e.size != 0 &&
                       lagged.take_on_stream(e.device, e.stream, e.size, &reused);
    // What this allocation could not use: freed, but the GPU has not passed the free yet.
    if (lagged.bytes() > r.peak_waiting) r.peak_waiting = lagged.bytes();
    if (taken) {
      reused.size = e.size;
      reused.stream = StreamHandle(e.stream);
      r.reused_on_stream++;
      became_live(e, reused);
      continue;
    }
    DeviceReplay* dr = device(e.device);
    if (!dr || e.size == 0) {
      r.failed++;
      continue;
    }
    auto t0 = clock::now();
    void* p = dr->allocator->allocate(std::size_t(e.size), StreamHandle(e.stream));
    spent += clock::now() - t0;
    r.operations++;
    if (!p) {
      // Once the host has refused this device's backend anything (a reservation it then made smaller,
      // a mapping), what the backend can still serve is shaped by this machine, not by the algorithm:
      // its failures from then on are the host's.
      (dr->provider->host_failures() != 0 ? r.host_failed : r.failed)++;
      continue;
    }
    became_live(e, Block{p, e.size, e.size, e.device, StreamHandle(e.stream)});
  }
  lagged.release_all(give_back);
  while (!live.empty()) release(live.begin());
  for (auto& [d, dr] : devices) {
    r.provider_misuse += dr.provider->misuse_count();
    dr.allocator.reset();  // before its provider
  }
  r.ns_per_operation = r.operations ? double(spent.count()) / double(r.operations) : 0;
  if (progress) progress(trace.events.size(), trace.events.size());
}

}  // namespace

}  // namespace gpushim::tracing
