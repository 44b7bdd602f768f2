#include "analysis/trace_replay.h"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <thread>
#include <unordered_map>

#include "allocators/thread_cache_allocator.h"
#include "analysis/replay_freed_blocks.h"
#include "providers/host_provider.h"

namespace gpushim::tracing {
namespace {

constexpr std::uint64_t kProgressEvery = 1u << 20;  // events between progress reports

const char* no_environment(const char*, void*) { return nullptr; }

void replay_events(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress,
                   const GpuLag& lag, const ReplayCaches& caches, ReplayResult* result);

// With thread caches, each trace thread's calls run on a worker thread of its own, one call at a time
// in the trace's order (the caller waits for each), so the per-thread caches see the program's threads.
// Without, every call runs on the caller's thread.
class ReplayThreads {
 public:
  explicit ReplayThreads(bool enabled) : enabled_(enabled) {}
  ~ReplayThreads() { stop(); }
  ReplayThreads(const ReplayThreads&) = delete;
  ReplayThreads& operator=(const ReplayThreads&) = delete;

  void run_on(std::uint32_t thread_id, const std::function<void()>& call) {
    if (!enabled_) {
      call();
      return;
    }
    Worker& w = worker(thread_id);
    std::unique_lock<std::mutex> lock(w.mutex);
    w.call = &call;
    w.wake.notify_one();
    w.wake.wait(lock, [&] { return w.call == nullptr; });
  }
  void stop() {
    for (auto& [id, w] : workers_) {
      {
        std::lock_guard<std::mutex> lock(w->mutex);
        w->stopping = true;
      }
      w->wake.notify_one();
      if (w->thread.joinable()) w->thread.join();
    }
    workers_.clear();
  }

 private:
  struct Worker {
    std::mutex mutex;
    std::condition_variable wake;  // both ways: a call posted, a call done
    const std::function<void()>* call = nullptr;
    bool stopping = false;
    std::thread thread;
  };
  Worker& worker(std::uint32_t thread_id) {
    std::unique_ptr<Worker>& slot = workers_[thread_id];
    if (!slot) {
      slot = std::make_unique<Worker>();
      Worker* w = slot.get();
      w->thread = std::thread([w] {
        std::unique_lock<std::mutex> lock(w->mutex);
        for (;;) {
          w->wake.wait(lock, [&] { return w->call != nullptr || w->stopping; });
          if (w->call) {
            (*w->call)();
            w->call = nullptr;
            w->wake.notify_one();
          } else {
            return;
          }
        }
      });
    }
    return *slot;
  }

  const bool enabled_;
  std::map<std::uint32_t, std::unique_ptr<Worker>> workers_;
};

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
                          const GpuLag& lag, const ReplayCaches& caches) {
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
    replay_events(trace, backend, progress, lag, caches, &r);
  } catch (const std::bad_alloc&) {
    // The host, not the backend, ran out (an address-space limit, a small machine): say so rather than
    // count it as the backend's failure. What was measured up to here stands.
    r.host_out_of_memory = true;
  }
  r.fragmentation = r.peak_live ? double(r.peak_reserved) / double(r.peak_live) : 0;
  return r;
}

namespace {

void replay_events(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress,
                   const GpuLag& lag, const ReplayCaches& caches, ReplayResult* result) {
  ReplayResult& r = *result;
  // Declared first, so destroyed last: the workers exit (their caches retire into the allocators)
  // before the allocators go.
  ReplayThreads threads(caches.thread_caches);
  std::uint32_t thread_now = 0;  // the trace thread of the event being replayed
  // Defaults only: a replay compares algorithms, not the settings of the run that was traced.
  const Settings settings = parse_settings(&no_environment, nullptr);
  std::map<std::int32_t, DeviceReplay> devices;
  std::unordered_map<std::uint64_t, ReplayBlock> live;  // by block_key()
  FreedBlocks freed(lag);
  std::uint64_t live_bytes = 0, reserved = 0;
  std::chrono::nanoseconds spent{0};
  using clock = std::chrono::steady_clock;

  auto device = [&](std::int32_t d) -> DeviceReplay* {
    auto it = devices.find(d);
    if (it != devices.end()) return it->second.allocator ? &it->second : nullptr;
    DeviceReplay& dr = devices[d];
    dr.provider = std::make_unique<HostProvider>();
    dr.allocator = backend.factory(*dr.provider, settings);
    if (dr.allocator && caches.thread_caches)
      dr.allocator = std::make_unique<ThreadCacheAllocator>(
          std::move(dr.allocator),
          caches.large_slots ? ThreadCacheAllocator::LargeSlots::always : ThreadCacheAllocator::LargeSlots::never);
    return dr.allocator ? &dr : nullptr;
  };
  auto reserved_now = [&] {
    std::uint64_t sum = 0;
    for (auto& [d, dr] : devices) sum += dr.provider->bytes_mapped();
    return sum;
  };
  auto give_back = [&](const ReplayBlock& block) {
    DeviceReplay* dr = device(block.device);
    threads.run_on(thread_now, [&] {  // timed on the thread that calls: not the hand-over
      auto t0 = clock::now();
      dr->allocator->deallocate(block.pointer, block.backend_size, block.stream);
      spent += clock::now() - t0;
    });
    r.operations++;
  };
  auto release = [&](std::unordered_map<std::uint64_t, ReplayBlock>::iterator it) {
    give_back(it->second);
    live_bytes -= it->second.size;
    live.erase(it);
  };
  auto became_live = [&](const TraceEvent& e, const ReplayBlock& block) {
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
    thread_now = e.thread_id;
    freed.before_call(this_call, e.time_ns, give_back);
    auto it = live.find(block_key(e));
    if (free) {
      if (it == live.end()) continue;
      const ReplayBlock block = it->second;
      live_bytes -= block.size;
      live.erase(it);
      freed.free(block, this_call, e.time_ns, e.kind == EventKind::free_async, e.stream, e.thread_id, give_back);
      continue;
    }
    if (it != live.end()) release(it);  // a free the trace lost: the address was handed out again
    ReplayBlock reused;
    const bool taken = e.kind == EventKind::alloc_async && e.size != 0 &&
                       freed.take_on_stream(e.device, e.stream, e.size, &reused);
    // What this allocation could not use: freed, but the GPU has not passed the free yet.
    if (freed.bytes() > r.peak_waiting) r.peak_waiting = freed.bytes();
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
    void* p = nullptr;
    threads.run_on(thread_now, [&] {
      auto t0 = clock::now();
      p = dr->allocator->allocate(std::size_t(e.size), StreamHandle(e.stream));
      spent += clock::now() - t0;
    });
    r.operations++;
    if (!p) {
      // Once the host has refused this device's backend anything (a reservation it then made smaller,
      // a mapping), what the backend can still serve is shaped by this machine, not by the algorithm:
      // its failures from then on are the host's.
      (dr->provider->host_failures() != 0 ? r.host_failed : r.failed)++;
      continue;
    }
    became_live(e, ReplayBlock{p, e.size, e.size, e.device, StreamHandle(e.stream)});
  }
  freed.release_all(give_back);
  while (!live.empty()) release(live.begin());
  threads.stop();  // before the allocators go: a worker's exit retires its caches into them
  for (auto& [d, dr] : devices) {
    r.provider_misuse += dr.provider->misuse_count();
    dr.allocator.reset();  // before its provider
  }
  r.ns_per_operation = r.operations ? double(spent.count()) / double(r.operations) : 0;
  if (progress) progress(trace.events.size(), trace.events.size());
}

}  // namespace

}  // namespace gpushim::tracing
