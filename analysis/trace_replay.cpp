#include "analysis/trace_replay.h"

#include <chrono>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <unordered_map>

#include "providers/host_provider.h"

namespace gpushim::tracing {
namespace {

constexpr std::uint64_t kProgressEvery = 1u << 20;  // events between progress reports

const char* no_environment(const char*, void*) { return nullptr; }

void replay_events(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress,
                   ReplayResult* result);

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

ReplayResult replay_trace(const Trace& trace, const BackendInfo& backend, const ReplayProgress& progress) {
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
    replay_events(trace, backend, progress, &r);
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
                   ReplayResult* result) {
  ReplayResult& r = *result;
  // Defaults only: a replay compares algorithms, not the settings of the run that was traced.
  const Settings settings = parse_settings(&no_environment, nullptr);
  std::map<std::int32_t, DeviceReplay> devices;
  struct Block {
    void* pointer;
    std::uint64_t size;
    std::int32_t device;
    StreamHandle stream;
  };
  std::unordered_map<std::uint64_t, Block> live;  // by block_key()
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
  auto release = [&](std::unordered_map<std::uint64_t, Block>::iterator it) {
    DeviceReplay* dr = device(it->second.device);
    auto t0 = clock::now();
    dr->allocator->deallocate(it->second.pointer, it->second.size, it->second.stream);
    spent += clock::now() - t0;
    r.operations++;
    live_bytes -= it->second.size;
    live.erase(it);
  };

  std::uint64_t done = 0;
  for (const TraceEvent& e : trace.events) {
    if (progress && ++done % kProgressEvery == 0) progress(done, trace.events.size());
    bool alloc = is_alloc(e.kind);
    bool free = is_free(e.kind);
    if (!alloc && !free) continue;
    auto it = live.find(block_key(e));
    if (free) {
      if (it != live.end()) release(it);
      continue;
    }
    if (it != live.end()) release(it);  // a free the trace lost: the address was handed out again
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
    live.emplace(block_key(e), Block{p, e.size, e.device, StreamHandle(e.stream)});
    live_bytes += e.size;
    if (live_bytes > r.peak_live) r.peak_live = live_bytes;
    reserved = reserved_now();
    if (reserved > r.peak_reserved) r.peak_reserved = reserved;
  }
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
