#include "analysis/trace_replay.h"

#include <chrono>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <unordered_map>

#include "analysis/replay_freed_blocks.h"
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

void replay_events(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress,
                   const GpuLag& lag, ReplayResult* result) {
  ReplayResult& r = *result;
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
    return dr.allocator ? &dr : nullptr;
  };
  auto reserved_now = [&] {
    std::uint64_t sum = 0;
    for (auto& [d, dr] : devices) sum += dr.provider->bytes_mapped();
    return sum;
  };
  auto give_back = [&](const ReplayBlock& block) {
    DeviceReplay* dr = device(block.device);
    auto t0 = clock::now();
    dr->allocator->deallocate(block.pointer, block.backend_size, block.stream);
    spent += clock::now() - t0;
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
    became_live(e, ReplayBlock{p, e.size, e.size, e.device, StreamHandle(e.stream)});
  }
  freed.release_all(give_back);
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
