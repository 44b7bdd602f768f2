// A fake libcuda.so.1 for the CPU tests: enough of the driver for gpushim's interposer AND its real
// router and backends to run without a GPU.
//
// - Contexts: one primary context per fake device (FAKE_CUDA_DEVICES, default 1); every thread starts
//   with device 0's primary context current (as after cudaSetDevice(0)); Set/Push/Pop/GetDevice work.
// - Memory: cuMemAlloc and pool allocations over aligned_alloc; VMM over host memory:
//   cuMemAddressReserve = mmap PROT_NONE, cuMemCreate = a handle that only counts bytes, cuMemMap = a
//   fresh PROT_NONE mapping at the address, cuMemSetAccess = mprotect read-write, cuMemUnmap = PROT_NONE
//   again (the pages are dropped). Granularity 2 MiB, as on the H100. FAKE_CUDA_TOTAL_MEMORY (bytes,
//   default 16 GiB) caps physical memory per device: past it, allocation answers OUT_OF_MEMORY.
//   cuMemCreate on CU_MEM_LOCATION_TYPE_HOST_NUMA (node 0) is host memory, as on the H100: capped by
//   FAKE_CUDA_HOST_MEMORY (default 64 GiB), and cuPointerGetAttribute(s) call it CU_MEMORYTYPE_HOST
//   (device mappings: DEVICE). FAKE_CUDA_NO_HOST_VMM=1 makes the devices refuse host-located memory.
// - Events: a record takes a ticket; an event is complete once the fake GPU has reached its ticket.
//   The GPU finishes everything at once unless a test holds it (fake_cuda_hold_gpu), which is how a test
//   proves a freed block is not reused before its fence completes. Synchronize calls complete the work.
//   A test can also hold one stream (fake_cuda_hold_stream): events recorded on it stay pending until
//   it is released, and so does later work of any stream that waited for them (cuStreamWaitEvent), of
//   a blocking stream after held legacy work, and of the legacy stream after held blocking-stream work.
// - Streams remember flags, context and capture state; recording on a destroyed stream is an error
//   (the real driver crashes there).
// - Every entry point except cuCtxGetCurrent counts its calls (cuCtxGetCurrent runs on every
//   allocation; a shared counter would make the fake the bottleneck of multi-threaded benchmarks).
//
// Its cuGetProcAddress answers like the real one, versions included (cuMemAlloc at 2000 is the 32-bit
// v1, cuCtxSynchronize at 13000 is the v2 that takes a context), so the tests can tell a right
// substitution from a wrong one.
//
// Test-only exports: fake_cuda_calls(symbol), fake_cuda_total_calls(), fake_cuda_function(symbol),
// fake_cuda_last_stream(), fake_cuda_hold_gpu(held), fake_cuda_hold_stream(stream, held),
// fake_cuda_physical_bytes(device),
// fake_cuda_live_events(), fake_cuda_device_of(pointer) (kFakeHostLocation for host memory),
// fake_cuda_host_physical_bytes(), fake_cuda_records_on_destroyed_streams(),
// fake_cuda_accessible_from(pointer, device), fake_cuda_peer_enabled(device, peer).
// - Access: cuMemSetAccess records, per mapping, which devices its descriptors name (PROT_NONE clears
//   one); cuCtxEnablePeerAccess/Disable keep the pairs and answer ALREADY_ENABLED / NOT_ENABLED as the
//   driver does; each device has a default pool (cuDeviceGetDefaultMemPool = cuDeviceGetMemPool).
// - Topology: every pair of devices can reach each other, except the pairs FAKE_CUDA_NO_PEER lists
//   ("0-2,1-3": a machine without a link between those GPUs). For those, cuDeviceCanAccessPeer says 0,
//   cuCtxEnablePeerAccess answers PEER_ACCESS_UNSUPPORTED, and cuMemSetAccess / cuMemPoolSetAccess refuse
//   a descriptor that names the other device (INVALID_DEVICE), as the real driver does.
#include <cuda.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

constexpr std::size_t kAlignment = 512;                  // what cuMemAlloc gives (texture alignment)
constexpr std::size_t kGranularity = std::size_t{2} << 20;  // the H100's VMM granularity
constexpr int kMaxDevices = 8;
constexpr int kHostLocation = -2;  // the "device" of host-located physical memory (fake_cuda_device_of)

// ---- call counters ----

struct Counter {
  const char* symbol = nullptr;
  std::atomic<int> calls{0};
};
constexpr int kMaxCounters = 160;
Counter counters[kMaxCounters];
std::atomic<int> counter_count{0};
std::mutex counters_lock;

Counter* find_counter(const char* symbol) {
  const int n = counter_count.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i)
    if (std::strcmp(counters[i].symbol, symbol) == 0) return &counters[i];
  return nullptr;
}
std::atomic<int>& counter(const char* symbol) {
  std::lock_guard<std::mutex> guard(counters_lock);
  if (Counter* c = find_counter(symbol)) return c->calls;
  const int n = counter_count.load(std::memory_order_relaxed);
  if (n == kMaxCounters) std::abort();  // a fixture bug: raise kMaxCounters
  counters[n].symbol = symbol;
  counter_count.store(n + 1, std::memory_order_release);
  return counters[n].calls;
}
// One lookup per call site, then a relaxed add.
#define COUNT(symbol)                                         \
  do {                                                        \
    static std::atomic<int>& fake_counter_ = counter(symbol); \
    fake_counter_.fetch_add(1, std::memory_order_relaxed);    \
  } while (0)

// ---- devices and contexts ----

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  unsigned long long value = std::strtoull(text, &end, 10);
  return end && *end == '\0' && value ? static_cast<std::size_t>(value) : fallback;
}
int device_count() {
  static const int n = static_cast<int>(std::min<std::size_t>(env_size("FAKE_CUDA_DEVICES", 1), kMaxDevices));
  return n;
}
// Whether devices a and b may reach each other's memory (FAKE_CUDA_NO_PEER, above).
bool can_access_peer(int a, int b) {
  if (a == b || a < 0 || b < 0 || a >= device_count() || b >= device_count()) return false;
  static const unsigned long long cut = [] {  // bit a*8+b: no link between a and b
    unsigned long long bits = 0;
    const char* text = std::getenv("FAKE_CUDA_NO_PEER");
    for (const char* c = text; c && *c;) {
      int x = -1, y = -1, used = 0;
      if (std::sscanf(c, "%d-%d%n", &x, &y, &used) != 2) break;
      if (x >= 0 && y >= 0 && x < kMaxDevices && y < kMaxDevices) bits |= 1ull << (x * 8 + y) | 1ull << (y * 8 + x);
      c += used;
      if (*c == ',') ++c;
    }
    return bits;
  }();
  return !(cut >> (a * 8 + b) & 1u);
}
std::size_t total_memory() {
  static const std::size_t bytes = env_size("FAKE_CUDA_TOTAL_MEMORY", std::size_t{16} << 30);
  return bytes;
}

struct FakeContext {
  int device;
};
FakeContext primary_contexts[kMaxDevices] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};
CUcontext primary(int device) { return reinterpret_cast<CUcontext>(&primary_contexts[device]); }
int device_of(CUcontext context) {
  for (int d = 0; d < kMaxDevices; ++d)
    if (context == primary(d)) return d;
  return -1;
}

// Constant-initialised and initial-exec (the fake is loaded at startup): a read of the current context
// is one %fs load, as the real driver's is cheap, so the benchmarks over this fake measure gpushim.
// `context_chosen` false means "device 0's primary context", the state a runtime program starts in.
constexpr int kMaxContextStack = 16;
#define FAKE_TLS thread_local __attribute__((tls_model("initial-exec")))
FAKE_TLS CUcontext chosen_context = nullptr;
FAKE_TLS bool context_chosen = false;
FAKE_TLS CUcontext context_stack[kMaxContextStack];
FAKE_TLS int context_depth = 0;
CUcontext current_context_now() { return context_chosen ? chosen_context : primary(0); }
void choose_context(CUcontext context) {
  chosen_context = context;
  context_chosen = true;
}

// Physical bytes in use per device (cuMemAlloc, pools and cuMemCreate together).
std::atomic<std::size_t> physical[kMaxDevices];
// Host-located physical memory (cuMemCreate with CU_MEM_LOCATION_TYPE_HOST_NUMA).
std::atomic<std::size_t> host_physical{0};
std::size_t host_memory() {
  static const std::size_t bytes = env_size("FAKE_CUDA_HOST_MEMORY", std::size_t{64} << 30);
  return bytes;
}
bool host_vmm_supported() {
  const char* off = std::getenv("FAKE_CUDA_NO_HOST_VMM");
  return !(off && off[0] == '1');
}
bool take_host_physical(std::size_t bytes) {
  std::size_t now = host_physical.load(std::memory_order_relaxed);
  do {
    if (bytes > host_memory() || now > host_memory() - bytes) return false;
  } while (!host_physical.compare_exchange_weak(now, now + bytes, std::memory_order_relaxed));
  return true;
}

bool take_physical(int device, std::size_t bytes) {
  std::size_t now = physical[device].load(std::memory_order_relaxed);
  do {
    if (bytes > total_memory() || now > total_memory() - bytes) return false;
  } while (!physical[device].compare_exchange_weak(now, now + bytes, std::memory_order_relaxed));
  return true;
}
void give_physical(int device, std::size_t bytes) { physical[device].fetch_sub(bytes, std::memory_order_relaxed); }

// ---- cuMemAlloc-style allocations (also pools) ----

struct Allocation {
  std::size_t bytes;
  int device;
  const void* pool = nullptr;  // the FakePool of a stream-ordered allocation; null for cuMemAlloc
};
std::mutex allocations_lock;
std::unordered_map<CUdeviceptr, Allocation>& allocations() {
  static auto* live = new std::unordered_map<CUdeviceptr, Allocation>();
  return *live;
}

int current_device() {
  const int d = device_of(current_context_now());
  return d < 0 ? 0 : d;
}

// On `device`, or on the current context's device when it is -1 (cuMemAlloc; pools name their device).
CUresult allocate(CUdeviceptr* dptr, size_t bytes, int device = -1, const void* pool = nullptr) {
  if (dptr == nullptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  if (device < 0 && !current_context_now()) return CUDA_ERROR_INVALID_CONTEXT;
  if (device < 0) device = current_device();
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (!take_physical(device, rounded)) return CUDA_ERROR_OUT_OF_MEMORY;
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (!p) {
    give_physical(device, rounded);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  std::lock_guard<std::mutex> guard(allocations_lock);
  allocations()[reinterpret_cast<CUdeviceptr>(p)] = {rounded, device, pool};
  *dptr = reinterpret_cast<CUdeviceptr>(p);
  return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr dptr) {
  if (dptr == 0) return CUDA_SUCCESS;
  Allocation allocation{};
  {
    std::lock_guard<std::mutex> guard(allocations_lock);
    auto it = allocations().find(dptr);
    if (it == allocations().end()) return CUDA_ERROR_INVALID_VALUE;  // what the driver says to a stranger
    allocation = it->second;
    allocations().erase(it);
  }
  std::free(reinterpret_cast<void*>(dptr));
  give_physical(allocation.device, allocation.bytes);
  return CUDA_SUCCESS;
}

// ---- virtual memory ----

struct PhysicalHandle {
  std::size_t bytes;
  int device;
};
std::mutex vmm_lock;
std::map<std::uintptr_t, std::size_t>& reservations() {  // base -> bytes
  static auto* r = new std::map<std::uintptr_t, std::size_t>();
  return *r;
}
bool inside_reservation(std::uintptr_t p, std::size_t bytes) {  // vmm_lock held
  auto it = reservations().upper_bound(p);
  if (it == reservations().begin()) return false;
  --it;
  return p >= it->first && p - it->first <= it->second && bytes <= it->second - (p - it->first);
}
bool granule_multiple(std::size_t v) { return v != 0 && v % kGranularity == 0; }
struct Mapping {
  std::size_t bytes;
  int device;
  unsigned access = 0;  // bit d: device d may read and write it (cuMemSetAccess)
};
std::map<std::uintptr_t, Mapping>& mappings() {  // base -> what cuMemMap put there; vmm_lock held
  static auto* m = new std::map<std::uintptr_t, Mapping>();
  return *m;
}
void forget_mappings(std::uintptr_t p, std::size_t bytes) {  // vmm_lock held
  auto it = mappings().lower_bound(p);
  while (it != mappings().end() && it->first < p + bytes) it = mappings().erase(it);
}

// ---- events ----

// Tickets: a record takes the next ticket; the fake GPU has finished everything up to `completed`.
std::atomic<std::uint64_t> last_ticket{0};
std::atomic<std::uint64_t> completed_ticket{0};
std::atomic<bool> gpu_held{false};
std::atomic<int> live_events{0};
// A driver call a test paused (fake_cuda_pause_*) does not return until released; `waiting` counts
// the calls held there, so a test sees who reached the call and what other threads can do meanwhile.
struct PausedCall {
  std::atomic<bool> paused{false};
  std::atomic<int> waiting{0};
  void wait_while_paused() {
    if (!paused.load()) return;
    waiting.fetch_add(1);
    while (paused.load()) std::this_thread::yield();
    waiting.fetch_sub(1);
  }
};
PausedCall legacy_queries;  // cuStreamQuery(CU_STREAM_LEGACY)
PausedCall stream_writes;   // cuStreamWriteValue32, any stream
struct FakeEvent {
  std::atomic<std::uint64_t> ticket{0};
  std::vector<std::uint64_t> gates;  // gates_lock: held-stream work it comes after (below)
};
void land_due_writes();  // below: stream writes whose work is done reach their word
void complete_up_to(std::uint64_t ticket) {
  std::uint64_t now = completed_ticket.load();
  while (now < ticket && !completed_ticket.compare_exchange_weak(now, ticket)) {
  }
  land_due_writes();
}
void complete_all() { complete_up_to(last_ticket.load()); }

// ---- streams ----

struct FakeStream {
  unsigned flags;
  CUcontext context;
  bool capturing;
};
std::mutex streams_lock;
std::unordered_map<CUstream, FakeStream>& streams() {
  static auto* s = new std::unordered_map<CUstream, FakeStream>();
  return *s;
}
bool special_stream(CUstream s) { return s == nullptr || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }

// Streams whose context a test "destroyed" (fake_cuda_kill_stream): stream writes queued on them never
// land, and cuStreamQuery answers CUDA_ERROR_CONTEXT_IS_DESTROYED. streams_lock held.
std::set<CUstream>& dead_streams() {
  static auto* dead = new std::set<CUstream>();
  return *dead;
}

std::atomic<CUstream> last_stream{nullptr};
std::atomic<int> records_on_destroyed_streams{0};
CUstream effective_per_thread(CUstream stream) { return stream == nullptr ? CU_STREAM_PER_THREAD : stream; }

CUresult create_stream(CUstream* stream, unsigned flags) {
  if (!stream) return CUDA_ERROR_INVALID_VALUE;
  if (!current_context_now()) return CUDA_ERROR_INVALID_CONTEXT;
  auto* handle = reinterpret_cast<CUstream>(std::aligned_alloc(kAlignment, kAlignment));
  std::lock_guard<std::mutex> guard(streams_lock);
  streams()[handle] = {flags, current_context_now(), false};
  *stream = handle;
  return CUDA_SUCCESS;
}
void set_capturing(CUstream stream, bool capturing) {
  std::lock_guard<std::mutex> guard(streams_lock);
  auto it = streams().find(stream);
  if (it != streams().end()) it->second.capturing = capturing;
}

// Per-stream holds: each hold of a stream is a gate, closed until the stream is released. An event
// comes after the gates of its stream's hold and of every hold its stream waited for since; it is
// complete once all of them are open. Unused (no lock taken) until a test holds a stream.
std::atomic<bool> gates_used{false};
std::mutex gates_lock;  // taken after streams_lock
std::uint64_t next_gate = 1;
std::set<std::uint64_t>& closed_gates() {
  static auto* gates = new std::set<std::uint64_t>();
  return *gates;
}
struct StreamGates {
  std::uint64_t holding = 0;           // the open hold's gate, 0 when the stream is not held
  std::vector<std::uint64_t> waited;   // closed gates of events this stream waited for
};
std::unordered_map<CUstream, StreamGates>& stream_gates() {
  static auto* gates = new std::unordered_map<CUstream, StreamGates>();
  return *gates;
}
CUstream gate_key(CUstream s) { return s == nullptr ? CU_STREAM_LEGACY : s; }
bool blocking_stream(CUstream s) {  // streams_lock held
  auto it = streams().find(s);
  return it != streams().end() && !(it->second.flags & CU_STREAM_NON_BLOCKING);
}
void append_closed_gates(const StreamGates& from, std::vector<std::uint64_t>* to) {  // gates_lock held
  if (from.holding) to->push_back(from.holding);
  for (std::uint64_t g : from.waited)
    if (closed_gates().count(g)) to->push_back(g);
}
// The gates work queued on `stream` now comes after.
std::vector<std::uint64_t> gates_of_work_on(CUstream stream) {
  std::vector<std::uint64_t> gates;
  if (!gates_used.load()) return gates;
  const CUstream key = gate_key(stream);
  std::lock_guard<std::mutex> streams_guard(streams_lock);
  std::lock_guard<std::mutex> guard(gates_lock);
  for (auto& [s, g] : stream_gates()) {
    // The legacy stream and blocking streams wait for each other's earlier work.
    const bool ordered_with = s == key || (key == CU_STREAM_LEGACY && blocking_stream(s)) ||
                              (s == CU_STREAM_LEGACY && blocking_stream(key));
    if (ordered_with) append_closed_gates(g, &gates);
  }
  return gates;
}
bool gates_open(const FakeEvent& event) {
  if (!gates_used.load()) return true;
  std::lock_guard<std::mutex> guard(gates_lock);
  for (std::uint64_t g : event.gates)
    if (closed_gates().count(g)) return false;
  return true;
}
// ---- stream writes (cuStreamWriteValue32) ----
// A write lands, as the GPU would make it, once the work before it is done: like an event, it takes a
// ticket and the gates of its stream's holds, and lands when the fake GPU reaches both.
struct PendingWrite {
  CUstream stream;
  std::uint64_t ticket;
  std::vector<std::uint64_t> gates;
  std::uint32_t* address;
  std::uint32_t value;
};
std::mutex writes_lock;  // taken after gates_lock
std::atomic<bool> writes_pending{false};
std::vector<PendingWrite>& pending_writes() {
  static auto* writes = new std::vector<PendingWrite>();
  return *writes;
}
void land_due_writes_locked() {  // gates_lock held
  std::lock_guard<std::mutex> guard(writes_lock);
  auto& writes = pending_writes();
  for (auto it = writes.begin(); it != writes.end();) {
    const bool open = std::none_of(it->gates.begin(), it->gates.end(),
                                   [](std::uint64_t g) { return closed_gates().count(g) != 0; });
    if (it->ticket > completed_ticket.load() || !open) {
      ++it;
      continue;
    }
    // A word's values only grow (router/probe_words.h): an older write landing late never lowers it.
    if (it->value > __atomic_load_n(it->address, __ATOMIC_ACQUIRE))
      __atomic_store_n(it->address, it->value, __ATOMIC_RELEASE);
    it = writes.erase(it);
  }
  writes_pending.store(!writes.empty());
}
void land_due_writes() {
  if (!writes_pending.load()) return;
  std::lock_guard<std::mutex> guard(gates_lock);
  land_due_writes_locked();
}

void open_gates(const std::vector<std::uint64_t>& gates) {  // gates_lock held
  for (std::uint64_t g : gates) closed_gates().erase(g);
  for (auto& [s, held] : stream_gates())
    if (held.holding && !closed_gates().count(held.holding)) held.holding = 0;
  if (writes_pending.load()) land_due_writes_locked();
}

// ---- pools ----

struct FakePool {
  int device = 0;
  cuuint64_t release_threshold = 0;
  unsigned access = 0;  // bit d: cuMemPoolSetAccess gave device d access
};
FakePool default_pools[kMaxDevices] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};

// Peer access enabled from device (first index) to the memory of device (second index).
std::atomic<bool> peer_enabled[kMaxDevices][kMaxDevices];

}  // namespace

// The v1 symbols cuda.h renames (cuMemAlloc -> cuMemAlloc_v2) keep their own names through asm labels.
extern "C" CUresult CUDAAPI fake_cuMemAlloc_v1(unsigned int* dptr, unsigned int bytes) __asm__("cuMemAlloc");
extern "C" CUresult CUDAAPI fake_cuGetProcAddress_v1(const char*, void**, int, cuuint64_t) __asm__("cuGetProcAddress");
extern "C" CUresult CUDAAPI fake_cuMemcpyBatchAsync_v1(CUdeviceptr*, CUdeviceptr*, size_t*, size_t, CUmemcpyAttributes*,
                                                       size_t*, size_t, size_t*, CUstream) __asm__("cuMemcpyBatchAsync");
extern "C" {
CUresult CUDAAPI cuLaunchKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                                     unsigned int, unsigned int, CUstream, void**, void**);
CUresult CUDAAPI cuMemsetD8Async_ptsz(CUdeviceptr, unsigned char, size_t, CUstream);
CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr*, size_t, CUstream);
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr, CUstream);
CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream, CUstreamCaptureMode);
CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream, CUgraph, const CUgraphNode*, const CUgraphEdgeData*,
                                                  size_t, CUstreamCaptureMode);
CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream, CUgraph*);
}

extern "C" {

// ---- test-only exports ----

int fake_cuda_calls(const char* symbol) {
  Counter* c = find_counter(symbol);
  return c ? c->calls.load() : 0;
}
// Calls of every counted entry point (all but cuCtxGetCurrent) so far.
long fake_cuda_total_calls() {
  long total = 0;
  const int n = counter_count.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) total += counters[i].calls.load();
  return total;
}
CUstream fake_cuda_last_stream() { return last_stream.load(); }
// cuEventRecord calls refused because their stream was destroyed: a fence that touched a dead stream.
int fake_cuda_records_on_destroyed_streams() { return records_on_destroyed_streams.load(); }
// While paused, cuStreamQuery(CU_STREAM_LEGACY) / cuStreamWriteValue32 do not return (PausedCall);
// the second of each pair says how many calls wait there.
void fake_cuda_pause_legacy_queries(int paused) { legacy_queries.paused.store(paused != 0); }
int fake_cuda_paused_legacy_queries() { return legacy_queries.waiting.load(); }
void fake_cuda_pause_stream_writes(int paused) { stream_writes.paused.store(paused != 0); }
int fake_cuda_paused_stream_writes() { return stream_writes.waiting.load(); }
// `stream` behaves as after its context was destroyed behind gpushim's back: its pending stream
// writes are dropped, later ones never land, and cuStreamQuery answers CONTEXT_IS_DESTROYED.
void fake_cuda_kill_stream(CUstream stream) {
  {
    std::lock_guard<std::mutex> guard(streams_lock);
    dead_streams().insert(stream);
  }
  std::lock_guard<std::mutex> gates_guard(gates_lock);
  std::lock_guard<std::mutex> guard(writes_lock);
  auto& writes = pending_writes();
  writes.erase(std::remove_if(writes.begin(), writes.end(), [&](const PendingWrite& w) { return w.stream == stream; }),
               writes.end());
}
// While held, recorded events stay pending (work "runs"); releasing completes everything.
void fake_cuda_hold_gpu(int held) {
  gpu_held.store(held != 0);
  if (held) return;
  complete_all();
  std::lock_guard<std::mutex> guard(gates_lock);
  closed_gates().clear();
  for (auto& [s, g] : stream_gates()) g = StreamGates{};
  if (writes_pending.load()) land_due_writes_locked();
}
// While held, events recorded on `stream` (CU_STREAM_LEGACY or 0: the legacy stream) stay pending, and
// so does work queued after them elsewhere (see the top of the file); releasing completes them.
void fake_cuda_hold_stream(CUstream stream, int held) {
  gates_used.store(true);
  std::lock_guard<std::mutex> guard(gates_lock);
  StreamGates& g = stream_gates()[gate_key(stream)];
  if (held && !g.holding) {
    g.holding = next_gate++;
    closed_gates().insert(g.holding);
  } else if (!held && g.holding) {
    open_gates({g.holding});
  }
}
std::size_t fake_cuda_physical_bytes(int device) {
  return device >= 0 && device < kMaxDevices ? physical[device].load() : 0;
}
std::size_t fake_cuda_host_physical_bytes() { return host_physical.load(); }
int fake_cuda_live_events() { return live_events.load(); }
// The device whose memory backs `p` (a cuMemAlloc/pool allocation or a cuMemMap'ed range), or -1.
int fake_cuda_device_of(CUdeviceptr p) {
  {
    std::lock_guard<std::mutex> guard(vmm_lock);
    auto it = mappings().upper_bound(p);
    if (it != mappings().begin()) {
      --it;
      if (p - it->first < it->second.bytes) return it->second.device;
    }
  }
  std::lock_guard<std::mutex> guard(allocations_lock);
  for (const auto& [start, allocation] : allocations())
    if (p >= start && p - start < allocation.bytes) return allocation.device;
  return -1;
}

// Whether `device` may access `p` (1/0), as the real driver decides: a mapped range by what the
// cuMemSetAccess calls over it left, a pool allocation by its pool's access, a cuMemAlloc allocation by
// peer access enabled from `device` to its owner. -1 when `p` is none of these.
int fake_cuda_accessible_from(CUdeviceptr p, int device) {
  {
    std::lock_guard<std::mutex> guard(vmm_lock);
    auto it = mappings().upper_bound(p);
    if (it != mappings().begin()) {
      --it;
      if (p - it->first < it->second.bytes) return (it->second.access >> device) & 1u;
    }
  }
  std::lock_guard<std::mutex> guard(allocations_lock);
  for (const auto& [start, allocation] : allocations()) {
    if (p < start || p - start >= allocation.bytes) continue;
    if (device == allocation.device) return 1;
    if (allocation.pool) return (static_cast<const FakePool*>(allocation.pool)->access >> device) & 1u;
    return peer_enabled[device][allocation.device].load() ? 1 : 0;
  }
  return -1;
}
int fake_cuda_peer_enabled(int device, int peer) {
  return device >= 0 && device < kMaxDevices && peer >= 0 && peer < kMaxDevices && peer_enabled[device][peer].load();
}

CUresult CUDAAPI fake_cuMemAlloc_v1(unsigned int*, unsigned int) {
  COUNT("cuMemAlloc");
  return CUDA_ERROR_NOT_SUPPORTED;  // a 32-bit device pointer cannot hold a malloc address
}

// ---- init, devices ----

CUresult CUDAAPI cuInit(unsigned int) {
  COUNT("cuInit");
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDriverGetVersion(int* version) {
  COUNT("cuDriverGetVersion");
  *version = CUDA_VERSION;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuGetErrorName(CUresult, const char** name) {
  *name = "CUDA_ERROR_FAKE";
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGet(CUdevice* device, int ordinal) {
  COUNT("cuDeviceGet");
  if (ordinal < 0 || ordinal >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetCount(int* n) {
  COUNT("cuDeviceGetCount");
  *n = device_count();
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice device) {
  COUNT("cuDeviceGetAttribute");
  if (device < 0 || device >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *value = 1; break;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_PITCH_ALIGNMENT: *value = 32; break;  // the H100's
    case CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *value = host_vmm_supported(); break;
    case CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID: *value = 0; break;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT:  // the H100's, or FAKE_CUDA_TEXTURE_ALIGNMENT
      *value = static_cast<int>(env_size("FAKE_CUDA_TEXTURE_ALIGNMENT", 512));
      break;
    default: *value = 0;
  }
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceTotalMem_v2(size_t* bytes, CUdevice device) {
  COUNT("cuDeviceTotalMem_v2");
  if (device < 0 || device >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  *bytes = total_memory();
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceCanAccessPeer(int* can, CUdevice device, CUdevice peer) {
  COUNT("cuDeviceCanAccessPeer");
  *can = can_access_peer(device, peer);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device) {
  COUNT("cuDevicePrimaryCtxRetain");
  if (device < 0 || device >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  *context = primary(device);
  return CUDA_SUCCESS;
}

// ---- contexts ----

CUresult CUDAAPI cuCtxGetCurrent(CUcontext* context) {  // not counted: see the top of the file
  *context = current_context_now();
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxSetCurrent(CUcontext context) {
  COUNT("cuCtxSetCurrent");
  if (context && device_of(context) < 0) return CUDA_ERROR_INVALID_CONTEXT;
  choose_context(context);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxPushCurrent_v2(CUcontext context) {
  COUNT("cuCtxPushCurrent_v2");
  if (!context || device_of(context) < 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (context_depth == kMaxContextStack) return CUDA_ERROR_OUT_OF_MEMORY;
  context_stack[context_depth++] = current_context_now();
  choose_context(context);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxPopCurrent_v2(CUcontext* context) {
  COUNT("cuCtxPopCurrent_v2");
  if (context_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
  if (context) *context = current_context_now();
  choose_context(context_stack[--context_depth]);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetDevice(CUdevice* device) {
  COUNT("cuCtxGetDevice");
  if (!current_context_now()) return CUDA_ERROR_INVALID_CONTEXT;
  *device = device_of(current_context_now());
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxSynchronize() {
  COUNT("cuCtxSynchronize");
  complete_all();
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxSynchronize_v2(CUcontext) {
  COUNT("cuCtxSynchronize_v2");
  complete_all();
  return CUDA_SUCCESS;
}

// ---- allocation ----

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
  COUNT("cuMemAlloc_v2");
  return allocate(dptr, bytes);
}
CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
  COUNT("cuMemFree_v2");
  return release(dptr);
}
CUresult CUDAAPI cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height, unsigned int) {
  COUNT("cuMemAllocPitch_v2");
  *pitch = (width + kAlignment - 1) / kAlignment * kAlignment;
  return allocate(dptr, *pitch * height);
}
CUresult CUDAAPI cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  COUNT("cuMemGetInfo_v2");
  const std::size_t used = physical[current_device()].load();
  *free_bytes = total_memory() > used ? total_memory() - used : 0;
  *total_bytes = total_memory();
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemAllocManaged(CUdeviceptr* dptr, size_t bytes, unsigned int) {
  COUNT("cuMemAllocManaged");
  return allocate(dptr, bytes);
}
CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream stream) {
  COUNT("cuMemAllocAsync");
  last_stream.store(stream);
  return allocate(dptr, bytes, -1, &default_pools[current_device()]);  // the device's current pool
}
CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytes, CUstream stream) {
  COUNT("cuMemAllocAsync_ptsz");
  last_stream.store(effective_per_thread(stream));
  return allocate(dptr, bytes, -1, &default_pools[current_device()]);
}
CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
  COUNT("cuMemFreeAsync");
  last_stream.store(stream);
  return release(dptr);
}
CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
  COUNT("cuMemFreeAsync_ptsz");
  last_stream.store(effective_per_thread(stream));
  return release(dptr);
}
CUresult CUDAAPI cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytes, CUmemoryPool pool, CUstream stream) {
  COUNT("cuMemAllocFromPoolAsync");
  last_stream.store(stream);
  if (!pool) return CUDA_ERROR_INVALID_VALUE;
  return allocate(dptr, bytes, reinterpret_cast<FakePool*>(pool)->device, pool);  // the pool's device
}
CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr p) {
  COUNT("cuMemGetAddressRange_v2");
  std::lock_guard<std::mutex> guard(allocations_lock);
  for (const auto& [start, allocation] : allocations()) {
    if (p >= start && p - start < allocation.bytes) {
      if (base) *base = start;
      if (size) *size = allocation.bytes;
      return CUDA_SUCCESS;
    }
  }
  return CUDA_ERROR_NOT_FOUND;
}
// MEMORY_TYPE and DEVICE_ORDINAL of VMM mappings, as the H100's driver answers them: host-located
// memory is CU_MEMORYTYPE_HOST. Everything else: CUDA_ERROR_INVALID_VALUE.
CUresult CUDAAPI cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr p) {
  COUNT("cuPointerGetAttribute");
  const int where = fake_cuda_device_of(p);
  if (!data || where == -1) return CUDA_ERROR_INVALID_VALUE;
  switch (attribute) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
      *static_cast<unsigned int*>(data) = where == kHostLocation ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
      *static_cast<int*>(data) = where == kHostLocation ? -1 : where;
      return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
      if (where != kHostLocation) return CUDA_ERROR_INVALID_VALUE;
      *static_cast<void**>(data) = reinterpret_cast<void*>(p);
      return CUDA_SUCCESS;
    default:
      return CUDA_ERROR_INVALID_VALUE;
  }
}
// Like the driver: no error for an attribute that does not apply, which is then written as 0.
CUresult CUDAAPI cuPointerGetAttributes(unsigned int count, CUpointer_attribute* attributes, void** data,
                                        CUdeviceptr p) {
  COUNT("cuPointerGetAttributes");
  if (!attributes || !data) return CUDA_ERROR_INVALID_VALUE;
  for (unsigned int i = 0; i < count; ++i) {
    if (!data[i]) continue;
    if (cuPointerGetAttribute(data[i], attributes[i], p) != CUDA_SUCCESS) *static_cast<void**>(data[i]) = nullptr;
  }
  return CUDA_SUCCESS;
}
// Device memory is host memory here: copies and memset are plain memory operations.
CUresult CUDAAPI cuMemsetD8_v2(CUdeviceptr p, unsigned char value, size_t n) {
  COUNT("cuMemsetD8_v2");
  std::memset(reinterpret_cast<void*>(p), value, n);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  COUNT("cuMemcpyDtoH_v2");
  std::memcpy(dst, reinterpret_cast<const void*>(src), n);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  COUNT("cuMemcpyHtoD_v2");
  std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return CUDA_SUCCESS;
}

// ---- pools ----

CUresult CUDAAPI cuMemPoolCreate(CUmemoryPool* pool, const CUmemPoolProps* props) {
  COUNT("cuMemPoolCreate");
  if (!pool || !props || props->location.id < 0 || props->location.id >= device_count())
    return CUDA_ERROR_INVALID_VALUE;
  auto* created = new FakePool();
  created->device = props->location.id;
  *pool = reinterpret_cast<CUmemoryPool>(created);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemPoolDestroy(CUmemoryPool pool) {
  COUNT("cuMemPoolDestroy");
  delete reinterpret_cast<FakePool*>(pool);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attribute, void* value) {
  COUNT("cuMemPoolSetAttribute");
  if (!pool || !value) return CUDA_ERROR_INVALID_VALUE;
  if (attribute == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD)
    reinterpret_cast<FakePool*>(pool)->release_threshold = *static_cast<cuuint64_t*>(value);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attribute, void* value) {
  COUNT("cuMemPoolGetAttribute");
  if (!pool || !value) return CUDA_ERROR_INVALID_VALUE;
  switch (attribute) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
      *static_cast<cuuint64_t*>(value) = reinterpret_cast<FakePool*>(pool)->release_threshold;
      break;
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: *static_cast<int*>(value) = 0; break;
    default: *static_cast<cuuint64_t*>(value) = 0;  // the fake pool caches nothing
  }
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc* map, size_t count) {
  COUNT("cuMemPoolSetAccess");
  if (!pool || !map) return CUDA_ERROR_INVALID_VALUE;
  auto* fake = reinterpret_cast<FakePool*>(pool);
  for (size_t i = 0; i < count; ++i) {
    if (map[i].location.id < 0 || map[i].location.id >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    if (map[i].location.id != fake->device && !can_access_peer(fake->device, map[i].location.id))
      return CUDA_ERROR_INVALID_DEVICE;
    const unsigned bit = 1u << map[i].location.id;
    fake->access = map[i].flags == CU_MEM_ACCESS_FLAGS_PROT_NONE ? fake->access & ~bit : fake->access | bit;
  }
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice device) {
  COUNT("cuDeviceGetDefaultMemPool");
  if (!pool || device < 0 || device >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  *pool = reinterpret_cast<CUmemoryPool>(&default_pools[device]);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice device) {
  COUNT("cuDeviceGetMemPool");
  return cuDeviceGetDefaultMemPool(pool, device);
}
CUresult CUDAAPI cuCtxEnablePeerAccess(CUcontext peer, unsigned int flags) {
  COUNT("cuCtxEnablePeerAccess");
  const int from = device_of(current_context_now()), to = device_of(peer);
  if (flags != 0 || to < 0 || to >= device_count() || from == to) return CUDA_ERROR_INVALID_VALUE;
  if (!can_access_peer(from, to)) return CUDA_ERROR_PEER_ACCESS_UNSUPPORTED;
  if (peer_enabled[from][to].exchange(true)) return CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxDisablePeerAccess(CUcontext peer) {
  COUNT("cuCtxDisablePeerAccess");
  const int from = device_of(current_context_now()), to = device_of(peer);
  if (to < 0 || to >= device_count()) return CUDA_ERROR_INVALID_VALUE;
  if (!peer_enabled[from][to].exchange(false)) return CUDA_ERROR_PEER_ACCESS_NOT_ENABLED;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemPoolTrimTo(CUmemoryPool, size_t) {
  COUNT("cuMemPoolTrimTo");
  return CUDA_SUCCESS;
}

// ---- virtual memory management ----

CUresult CUDAAPI cuMemGetAllocationGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                                               CUmemAllocationGranularity_flags) {
  COUNT("cuMemGetAllocationGranularity");
  if (prop && prop->location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA) {
    if (!granularity || prop->location.id != 0 || !host_vmm_supported()) return CUDA_ERROR_INVALID_VALUE;
    *granularity = kGranularity;
    return CUDA_SUCCESS;
  }
  if (!granularity || !prop || prop->location.id < 0 || prop->location.id >= device_count())
    return CUDA_ERROR_INVALID_VALUE;
  *granularity = kGranularity;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr, unsigned long long) {
  COUNT("cuMemAddressReserve");
  if (!ptr || !granule_multiple(size)) return CUDA_ERROR_INVALID_VALUE;
  if (alignment < kGranularity) alignment = kGranularity;
  const std::size_t span = size + alignment;
  void* raw = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t base = (start + alignment - 1) / alignment * alignment;
  if (base > start) munmap(raw, base - start);
  if (start + span > base + size) munmap(reinterpret_cast<void*>(base + size), start + span - (base + size));
  std::lock_guard<std::mutex> guard(vmm_lock);
  reservations()[base] = size;
  *ptr = base;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  COUNT("cuMemAddressFree");
  std::lock_guard<std::mutex> guard(vmm_lock);
  auto it = reservations().find(ptr);
  if (it == reservations().end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  munmap(reinterpret_cast<void*>(ptr), size);
  reservations().erase(it);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemCreate(CUmemGenericAllocationHandle* handle, size_t size, const CUmemAllocationProp* prop,
                             unsigned long long) {
  COUNT("cuMemCreate");
  if (!handle || !prop || !granule_multiple(size)) return CUDA_ERROR_INVALID_VALUE;
  if (prop->location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA) {
    if (prop->location.id != 0 || !host_vmm_supported()) return CUDA_ERROR_INVALID_VALUE;
    if (!take_host_physical(size)) return CUDA_ERROR_OUT_OF_MEMORY;
    *handle = reinterpret_cast<CUmemGenericAllocationHandle>(new PhysicalHandle{size, kHostLocation});
    return CUDA_SUCCESS;
  }
  const int device = prop->location.id;
  if (device < 0 || device >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  if (!take_physical(device, size)) return CUDA_ERROR_OUT_OF_MEMORY;
  *handle = reinterpret_cast<CUmemGenericAllocationHandle>(new PhysicalHandle{size, device});
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemRelease(CUmemGenericAllocationHandle handle) {
  COUNT("cuMemRelease");
  auto* physical_handle = reinterpret_cast<PhysicalHandle*>(handle);
  if (!physical_handle) return CUDA_ERROR_INVALID_VALUE;
  if (physical_handle->device == kHostLocation) {
    host_physical.fetch_sub(physical_handle->bytes, std::memory_order_relaxed);
  } else {
    give_physical(physical_handle->device, physical_handle->bytes);
  }
  delete physical_handle;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                          unsigned long long) {
  COUNT("cuMemMap");
  auto* physical_handle = reinterpret_cast<PhysicalHandle*>(handle);
  if (!physical_handle || offset != 0 || size > physical_handle->bytes || !granule_multiple(size))
    return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> guard(vmm_lock);
  if (!inside_reservation(ptr, size)) return CUDA_ERROR_INVALID_VALUE;
  // Fresh pages, still inaccessible: like the driver, access comes with cuMemSetAccess.
  void* mapped = mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  if (mapped == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  forget_mappings(ptr, size);
  mappings()[ptr] = {size, physical_handle->device};
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  COUNT("cuMemSetAccess");
  if (!desc || count == 0 || !granule_multiple(size)) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> guard(vmm_lock);
  if (!inside_reservation(ptr, size)) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; ++i)
    if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || desc[i].location.id < 0 ||
        desc[i].location.id >= device_count())
      return CUDA_ERROR_INVALID_DEVICE;
  for (auto it = mappings().lower_bound(ptr); it != mappings().end() && it->first < ptr + size; ++it)
    for (size_t i = 0; i < count; ++i)
      if (desc[i].location.id != it->second.device && it->second.device >= 0 &&
          !can_access_peer(it->second.device, desc[i].location.id))
        return CUDA_ERROR_INVALID_DEVICE;  // checked before anything changes
  for (auto it = mappings().lower_bound(ptr); it != mappings().end() && it->first < ptr + size; ++it) {
    for (size_t i = 0; i < count; ++i) {
      const unsigned bit = 1u << desc[i].location.id;
      it->second.access = desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_NONE ? it->second.access & ~bit
                                                                          : it->second.access | bit;
    }
  }
  return mprotect(reinterpret_cast<void*>(ptr), size, PROT_READ | PROT_WRITE) == 0 ? CUDA_SUCCESS
                                                                                  : CUDA_ERROR_INVALID_VALUE;
}
CUresult CUDAAPI cuMemUnmap(CUdeviceptr ptr, size_t size) {
  COUNT("cuMemUnmap");
  if (!granule_multiple(size)) return CUDA_ERROR_INVALID_VALUE;
  std::lock_guard<std::mutex> guard(vmm_lock);
  if (!inside_reservation(ptr, size)) return CUDA_ERROR_INVALID_VALUE;
  void* reset = mmap(reinterpret_cast<void*>(ptr), size, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  if (reset == MAP_FAILED) return CUDA_ERROR_INVALID_VALUE;
  forget_mappings(ptr, size);
  return CUDA_SUCCESS;
}

// ---- streams ----

CUresult CUDAAPI cuStreamCreate(CUstream* stream, unsigned int flags) {
  COUNT("cuStreamCreate");
  return create_stream(stream, flags);
}
CUresult CUDAAPI cuStreamCreateWithPriority(CUstream* stream, unsigned int flags, int) {
  COUNT("cuStreamCreateWithPriority");
  return create_stream(stream, flags);
}
CUresult CUDAAPI cuStreamDestroy_v2(CUstream stream) {
  COUNT("cuStreamDestroy_v2");
  {
    std::lock_guard<std::mutex> guard(streams_lock);
    if (streams().erase(stream) == 0) return CUDA_ERROR_INVALID_HANDLE;
  }
  std::free(stream);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode) {
  COUNT("cuStreamBeginCapture_v2");
  last_stream.store(stream);
  set_capturing(stream, true);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode) {
  COUNT("cuStreamBeginCapture_v2_ptsz");
  last_stream.store(effective_per_thread(stream));
  set_capturing(stream, true);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCaptureToGraph(CUstream stream, CUgraph, const CUgraphNode*, const CUgraphEdgeData*,
                                             size_t, CUstreamCaptureMode) {
  COUNT("cuStreamBeginCaptureToGraph");
  last_stream.store(stream);
  set_capturing(stream, true);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph, const CUgraphNode*,
                                                  const CUgraphEdgeData*, size_t, CUstreamCaptureMode) {
  COUNT("cuStreamBeginCaptureToGraph_ptsz");
  last_stream.store(effective_per_thread(stream));
  set_capturing(stream, true);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamEndCapture(CUstream stream, CUgraph* graph) {
  COUNT("cuStreamEndCapture");
  last_stream.store(stream);
  set_capturing(stream, false);
  *graph = nullptr;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream stream, CUgraph* graph) {
  COUNT("cuStreamEndCapture_ptsz");
  last_stream.store(effective_per_thread(stream));
  set_capturing(stream, false);
  *graph = nullptr;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamIsCapturing(CUstream stream, CUstreamCaptureStatus* status) {
  COUNT("cuStreamIsCapturing");
  *status = CU_STREAM_CAPTURE_STATUS_NONE;
  std::lock_guard<std::mutex> guard(streams_lock);
  auto it = streams().find(stream);
  if (it != streams().end() && it->second.capturing) *status = CU_STREAM_CAPTURE_STATUS_ACTIVE;
  return CUDA_SUCCESS;
}
// Done when an event recorded now would be: every ticket so far completed and no gate held on its work.
CUresult CUDAAPI cuStreamQuery(CUstream stream) {
  COUNT("cuStreamQuery");
  if (stream == CU_STREAM_LEGACY) legacy_queries.wait_while_paused();
  if (!special_stream(stream)) {
    std::lock_guard<std::mutex> guard(streams_lock);
    if (dead_streams().count(stream)) return CUDA_ERROR_CONTEXT_IS_DESTROYED;
    if (streams().find(stream) == streams().end()) return CUDA_ERROR_INVALID_HANDLE;
  }
  FakeEvent now;
  now.gates = gates_of_work_on(stream);
  return last_ticket.load() <= completed_ticket.load() && gates_open(now) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
CUresult CUDAAPI cuStreamSynchronize(CUstream) {
  COUNT("cuStreamSynchronize");
  complete_all();  // in-order fake GPU: finishing one stream's work finishes everything before it
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamGetCtx(CUstream stream, CUcontext* context) {
  COUNT("cuStreamGetCtx");
  if (special_stream(stream)) {
    if (!current_context_now()) return CUDA_ERROR_INVALID_CONTEXT;
    *context = current_context_now();
    return CUDA_SUCCESS;
  }
  std::lock_guard<std::mutex> guard(streams_lock);
  auto it = streams().find(stream);
  if (it == streams().end()) return CUDA_ERROR_INVALID_HANDLE;
  *context = it->second.context;
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamGetFlags(CUstream stream, unsigned int* flags) {
  COUNT("cuStreamGetFlags");
  *flags = 0;
  if (special_stream(stream)) return CUDA_SUCCESS;
  std::lock_guard<std::mutex> guard(streams_lock);
  auto it = streams().find(stream);
  if (it == streams().end()) return CUDA_ERROR_INVALID_HANDLE;
  *flags = it->second.flags;
  return CUDA_SUCCESS;
}

// ---- work on streams: no GPU runs it; calls are counted, and a set writes host memory ----

namespace {
CUresult check_stream(CUstream stream) {
  if (special_stream(stream)) return CUDA_SUCCESS;
  std::lock_guard<std::mutex> guard(streams_lock);
  return streams().count(stream) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
}  // namespace

CUresult CUDAAPI cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int) {
  COUNT("cuStreamWaitEvent");
  if (!event) return CUDA_ERROR_INVALID_HANDLE;
  const CUresult rc = check_stream(stream);
  if (rc == CUDA_SUCCESS && gates_used.load()) {
    // The wait takes the event's state now: later work on `stream` comes after what the event does.
    std::lock_guard<std::mutex> guard(gates_lock);
    StreamGates& g = stream_gates()[gate_key(stream)];
    for (std::uint64_t gate : reinterpret_cast<FakeEvent*>(event)->gates)
      if (closed_gates().count(gate)) g.waited.push_back(gate);
  }
  return rc;
}
// Mapped pinned host memory: plain host memory whose device address is its host address (as under
// unified addressing).
CUresult CUDAAPI cuMemHostAlloc(void** pp, size_t bytes, unsigned int) {
  COUNT("cuMemHostAlloc");
  if (!pp || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  *pp = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
  return *pp ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult CUDAAPI cuMemHostGetDevicePointer(CUdeviceptr* dptr, void* p, unsigned int) {
  COUNT("cuMemHostGetDevicePointer");
  if (!dptr || !p) return CUDA_ERROR_INVALID_VALUE;
  *dptr = reinterpret_cast<CUdeviceptr>(p);
  return CUDA_SUCCESS;
}
// FAKE_CUDA_NO_STREAM_WRITES=1: refused, as on a platform without stream memory operations.
CUresult CUDAAPI cuStreamWriteValue32(CUstream stream, CUdeviceptr address, cuuint32_t value, unsigned int) {
  COUNT("cuStreamWriteValue32");
  static const bool refused = std::getenv("FAKE_CUDA_NO_STREAM_WRITES") != nullptr;
  if (refused) return CUDA_ERROR_NOT_SUPPORTED;
  stream_writes.wait_while_paused();
  if (!special_stream(stream)) {
    std::lock_guard<std::mutex> guard(streams_lock);
    if (streams().find(stream) == streams().end()) return CUDA_ERROR_INVALID_HANDLE;
    if (dead_streams().count(stream)) return CUDA_SUCCESS;  // accepted, never lands
  }
  PendingWrite write{stream, 0, gates_of_work_on(stream), reinterpret_cast<std::uint32_t*>(address), value};
  {
    std::lock_guard<std::mutex> guard(writes_lock);
    write.ticket = last_ticket.fetch_add(1) + 1;
    pending_writes().push_back(std::move(write));
    writes_pending.store(true);
  }
  if (!gpu_held.load()) complete_up_to(last_ticket.load());
  else land_due_writes();
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuLaunchKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                                unsigned int, unsigned int, CUstream stream, void**, void**) {
  COUNT("cuLaunchKernel");
  return check_stream(stream);
}
CUresult CUDAAPI cuLaunchKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                                     unsigned int, unsigned int, unsigned int, CUstream stream, void**, void**) {
  COUNT("cuLaunchKernel_ptsz");
  return check_stream(stream);
}
CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream stream) {
  COUNT("cuMemsetD8Async");
  last_stream.store(stream);
  const CUresult rc = check_stream(stream);
  if (rc == CUDA_SUCCESS && dst) std::memset(reinterpret_cast<void*>(dst), value, n);
  return rc;
}
CUresult CUDAAPI cuMemsetD8Async_ptsz(CUdeviceptr dst, unsigned char value, size_t n, CUstream stream) {
  COUNT("cuMemsetD8Async_ptsz");
  const CUresult rc = check_stream(stream);
  if (rc == CUDA_SUCCESS && dst) std::memset(reinterpret_cast<void*>(dst), value, n);
  return rc;
}

// The batch copies (CUDA 13.0's prototype and 12.8's) and the decompression: work on a stream, which
// copies as the sets write; the decompression only counts.
namespace {
CUresult fake_batch_copy(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count, CUstream stream) {
  last_stream.store(stream);
  if (const CUresult rc = check_stream(stream); rc != CUDA_SUCCESS) return rc;
  if (!dsts || !srcs || !sizes) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; ++i)
    std::memcpy(reinterpret_cast<void*>(dsts[i]), reinterpret_cast<const void*>(srcs[i]), sizes[i]);
  return CUDA_SUCCESS;
}
}  // namespace
CUresult CUDAAPI cuMemcpyBatchAsync_v2(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                                       CUmemcpyAttributes*, size_t*, size_t, CUstream stream) {
  COUNT("cuMemcpyBatchAsync_v2");
  return fake_batch_copy(dsts, srcs, sizes, count, stream);
}
CUresult CUDAAPI fake_cuMemcpyBatchAsync_v1(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                                            CUmemcpyAttributes*, size_t*, size_t, size_t*, CUstream stream) {
  COUNT("cuMemcpyBatchAsync");
  return fake_batch_copy(dsts, srcs, sizes, count, stream);
}
CUresult CUDAAPI cuMemBatchDecompressAsync(CUmemDecompressParams*, size_t, unsigned int, size_t*, CUstream stream) {
  COUNT("cuMemBatchDecompressAsync");
  last_stream.store(stream);
  return check_stream(stream);
}

// ---- events ----

CUresult CUDAAPI cuEventCreate(CUevent* event, unsigned int) {
  COUNT("cuEventCreate");
  if (!event) return CUDA_ERROR_INVALID_VALUE;
  if (!current_context_now()) return CUDA_ERROR_INVALID_CONTEXT;
  *event = reinterpret_cast<CUevent>(new FakeEvent());
  live_events.fetch_add(1);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventRecord(CUevent event, CUstream stream) {
  COUNT("cuEventRecord");
  if (!event) return CUDA_ERROR_INVALID_HANDLE;
  if (!special_stream(stream)) {
    std::lock_guard<std::mutex> guard(streams_lock);
    if (streams().find(stream) == streams().end()) {  // destroyed stream
      records_on_destroyed_streams.fetch_add(1);
      return CUDA_ERROR_INVALID_HANDLE;
    }
  }
  std::vector<std::uint64_t> gates = gates_of_work_on(stream);
  if (gates_used.load()) {
    std::lock_guard<std::mutex> guard(gates_lock);
    reinterpret_cast<FakeEvent*>(event)->gates = std::move(gates);
  }
  const std::uint64_t ticket = last_ticket.fetch_add(1) + 1;
  reinterpret_cast<FakeEvent*>(event)->ticket.store(ticket);
  if (!gpu_held.load()) complete_up_to(ticket);
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventQuery(CUevent event) {
  COUNT("cuEventQuery");
  if (!event) return CUDA_ERROR_INVALID_HANDLE;
  const FakeEvent& fake = *reinterpret_cast<FakeEvent*>(event);
  return fake.ticket.load() <= completed_ticket.load() && gates_open(fake) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}
CUresult CUDAAPI cuEventSynchronize(CUevent event) {
  COUNT("cuEventSynchronize");
  if (!event) return CUDA_ERROR_INVALID_HANDLE;
  complete_up_to(reinterpret_cast<FakeEvent*>(event)->ticket.load());  // the wait, instantly over
  if (gates_used.load()) {
    std::lock_guard<std::mutex> guard(gates_lock);
    open_gates(reinterpret_cast<FakeEvent*>(event)->gates);
  }
  return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventDestroy_v2(CUevent event) {
  COUNT("cuEventDestroy_v2");
  if (!event) return CUDA_ERROR_INVALID_HANDLE;
  delete reinterpret_cast<FakeEvent*>(event);
  live_events.fetch_sub(1);
  return CUDA_SUCCESS;
}

}  // extern "C"

namespace {

struct ProcAddress {
  const char* name;
  int version;  // first version with this function; rows of one name, newest first
  void* function;
  void* per_thread_function;
};
template <typename F>
void* fn(F* f) {
  return reinterpret_cast<void*>(f);
}
#define FAKE_SAME(name, version, f) {name, version, fn(f), fn(f)}
const ProcAddress proc_addresses[] = {
    FAKE_SAME("cuInit", 2000, cuInit),
    FAKE_SAME("cuDriverGetVersion", 2020, cuDriverGetVersion),
    FAKE_SAME("cuCtxGetCurrent", 4000, cuCtxGetCurrent),
    FAKE_SAME("cuCtxSetCurrent", 4000, cuCtxSetCurrent),
    FAKE_SAME("cuDevicePrimaryCtxRetain", 7000, cuDevicePrimaryCtxRetain),  // a runtime's lazy start
    FAKE_SAME("cuCtxSynchronize", 13000, cuCtxSynchronize_v2),
    FAKE_SAME("cuCtxSynchronize", 2000, cuCtxSynchronize),
    FAKE_SAME("cuMemAlloc", 3020, cuMemAlloc_v2),
    FAKE_SAME("cuMemAlloc", 2000, fake_cuMemAlloc_v1),
    FAKE_SAME("cuMemFree", 3020, cuMemFree_v2),
    FAKE_SAME("cuMemAllocPitch", 3020, cuMemAllocPitch_v2),
    FAKE_SAME("cuMemGetInfo", 3020, cuMemGetInfo_v2),
    FAKE_SAME("cuMemAllocManaged", 6000, cuMemAllocManaged),
    {"cuMemAllocAsync", 11020, fn(cuMemAllocAsync), fn(cuMemAllocAsync_ptsz)},
    {"cuMemFreeAsync", 11020, fn(cuMemFreeAsync), fn(cuMemFreeAsync_ptsz)},
    FAKE_SAME("cuMemAllocFromPoolAsync", 11020, cuMemAllocFromPoolAsync),
    FAKE_SAME("cuStreamCreate", 2000, cuStreamCreate),
    FAKE_SAME("cuStreamCreateWithPriority", 5050, cuStreamCreateWithPriority),
    FAKE_SAME("cuStreamDestroy", 4000, cuStreamDestroy_v2),
    {"cuStreamBeginCapture", 10010, fn(cuStreamBeginCapture_v2), fn(cuStreamBeginCapture_v2_ptsz)},
    {"cuStreamBeginCaptureToGraph", 12030, fn(cuStreamBeginCaptureToGraph), fn(cuStreamBeginCaptureToGraph_ptsz)},
    {"cuStreamEndCapture", 10000, fn(cuStreamEndCapture), fn(cuStreamEndCapture_ptsz)},
    FAKE_SAME("cuStreamWaitEvent", 3020, cuStreamWaitEvent),
    {"cuLaunchKernel", 4000, fn(cuLaunchKernel), fn(cuLaunchKernel_ptsz)},
    {"cuMemsetD8Async", 3020, fn(cuMemsetD8Async), fn(cuMemsetD8Async_ptsz)},
    FAKE_SAME("cuMemcpyBatchAsync", 13000, cuMemcpyBatchAsync_v2),
    FAKE_SAME("cuMemcpyBatchAsync", 12080, fake_cuMemcpyBatchAsync_v1),
    FAKE_SAME("cuMemBatchDecompressAsync", 12060, cuMemBatchDecompressAsync),
    FAKE_SAME("cuEventCreate", 2000, cuEventCreate),
    FAKE_SAME("cuEventRecord", 2000, cuEventRecord),
    FAKE_SAME("cuEventQuery", 2000, cuEventQuery),
    FAKE_SAME("cuEventSynchronize", 2000, cuEventSynchronize),
    FAKE_SAME("cuEventDestroy", 4000, cuEventDestroy_v2),
    FAKE_SAME("cuCtxEnablePeerAccess", 4000, cuCtxEnablePeerAccess),
    FAKE_SAME("cuCtxDisablePeerAccess", 4000, cuCtxDisablePeerAccess),
    FAKE_SAME("cuMemPoolSetAccess", 11020, cuMemPoolSetAccess),
    FAKE_SAME("cuGetProcAddress", 12000, cuGetProcAddress_v2),
    FAKE_SAME("cuGetProcAddress", 11030, fake_cuGetProcAddress_v1),
};

bool known_name(const char* symbol) {
  for (const ProcAddress& row : proc_addresses) {
    if (std::strcmp(row.name, symbol) == 0) return true;
  }
  return false;
}

}  // namespace

extern "C" {

void* fake_cuda_proc_address(const char* symbol, int version, cuuint64_t flags) {
  for (const ProcAddress& row : proc_addresses) {
    if (std::strcmp(row.name, symbol) == 0 && version >= row.version) {
      return (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? row.per_thread_function : row.function;
    }
  }
  return nullptr;
}

CUresult CUDAAPI cuGetProcAddress_v2(const char* symbol, void** pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult* status) {
  *pfn = fake_cuda_proc_address(symbol, version, flags);
  if (status) {
    *status = *pfn                ? CU_GET_PROC_ADDRESS_SUCCESS
              : known_name(symbol) ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                                   : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  }
  return *pfn ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult CUDAAPI fake_cuGetProcAddress_v1(const char* symbol, void** pfn, int version, cuuint64_t flags) {
  return cuGetProcAddress_v2(symbol, pfn, version, flags, nullptr);
}

}  // extern "C"
