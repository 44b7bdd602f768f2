// alloc_bench: host time of one allocation + free pair, by size, thread count and pattern, for whatever
// allocator the program runs under. It knows nothing of gpushim: run it once plainly (the cudaMalloc and
// cudaMallocAsync columns) and once per gpushim backend under LD_PRELOAD, and put the CSV rows side by
// side (scripts/gpu_bench_table.py does). Method: warm up, many repetitions,
// medians and 99th percentiles of per-pair times, the clock's own cost measured and subtracted.
// --streams off,on measures each cell twice: as a program that creates no stream, and as one whose every
// thread first creates a non-blocking stream and keeps it carrying work (cuDNN, NCCL and servers with a
// stream per request all do), which is when an allocator must order frees against other streams' work.
#include <cuda.h>  // the driver API's types only: its entry points are found through the runtime
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_apps/alloc_bench_options.h"
#include "test_apps/check_cuda.h"
#include "test_apps/device_memory_sampler.h"

namespace {

using Clock = std::chrono::steady_clock;

const char* api_name(Api api) {
  switch (api) {
    case Api::runtime: return "runtime";
    case Api::async: return "async";
    case Api::host: return "host";
    case Api::driver: return "driver";
  }
  return "?";
}
const char* api_calls(Api api) {
  switch (api) {
    case Api::runtime: return "cudaMalloc+cudaFree";
    case Api::async: return "cudaMallocAsync+cudaFreeAsync";
    case Api::host: return "malloc+free";
    case Api::driver: return "cuMemAlloc+cuMemFree";
  }
  return "?";
}

// --api driver: cuMemAlloc and cuMemFree as libcudart gets them (docs/measured-facts.md: the runtime asks
// cuGetProcAddress for "cuMemAlloc" at version 3020), so under gpushim these are the shim's functions
// that cudaMalloc reaches, minus the runtime around them.
using MemAllocFn = CUresult (*)(CUdeviceptr*, size_t);
using MemFreeFn = CUresult (*)(CUdeviceptr);
MemAllocFn g_cu_mem_alloc = nullptr;
MemFreeFn g_cu_mem_free = nullptr;

void find_driver_pair() {
  cudaDriverEntryPointQueryResult found{};
  void* fn = nullptr;
  CHECK_CUDA(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 3020, cudaEnableDefault, &found));
  g_cu_mem_alloc = found == cudaDriverEntryPointSuccess ? reinterpret_cast<MemAllocFn>(fn) : nullptr;
  CHECK_CUDA(cudaGetDriverEntryPointByVersion("cuMemFree", &fn, 3020, cudaEnableDefault, &found));
  g_cu_mem_free = found == cudaDriverEntryPointSuccess ? reinterpret_cast<MemFreeFn>(fn) : nullptr;
  if (!g_cu_mem_alloc || !g_cu_mem_free) {
    std::fprintf(stderr, "alloc_bench: --api driver: the runtime found no cuMemAlloc/cuMemFree at version 3020\n");
    std::_Exit(2);
  }
}

void check_driver(CUresult rc, const char* call) {
  if (rc == CUDA_SUCCESS) return;
  std::fprintf(stderr, "alloc_bench: %s failed: CUresult %d\n", call, static_cast<int>(rc));
  std::fflush(stdout);
  std::_Exit(2);
}
const char* streams_name(StreamMode m) { return m == StreamMode::on ? "on" : "off"; }
const char* pattern_name(Pattern p) {
  return p == Pattern::pairs ? "pairs" : p == Pattern::window ? "window" : p == Pattern::random ? "random" : "handoff";
}

// Live bytes a window cell may hold over all threads: enough for 64 blocks of 1 MiB per thread at 16
// threads, without pushing 1 GiB windows past what an 80 GB card holds.
constexpr std::uint64_t kWindowBudget = 8ull << 30;
constexpr std::size_t kMaxWindow = 64;
// The random pattern: a window of 64 live blocks, sizes log-uniform over this range.
constexpr std::uint64_t kRandomMin = 256;
constexpr std::uint64_t kRandomMax = 16ull << 20;
// Fewer samples than this make the 99th percentile meaningless; more than kMaxReps per thread add
// nothing but time.
constexpr std::uint64_t kMinReps = 20;
constexpr std::uint64_t kMaxReps = 50000;
// The block the stream's kernel writes: the thread's own, allocated through the allocator under test.
constexpr std::size_t kStreamWorkBytes = 512;
// The handoff pattern's mailboxes per thread: a block waits in one for a few pairs, and the thread that
// frees it is any of them (with 16 threads, another thread 15 times in 16).
constexpr std::size_t kHandoffBoxesPerThread = 4;
// A cell stops at this multiple of its budget even if slow threads have not finished their repetitions.
constexpr double kCellDeadlineFactor = 4.0;

// The work that keeps a --streams on thread's stream busy: one thread writes one byte of a block it owns.
__global__ void touch_byte(unsigned char* block) { block[0] += 1; }

struct CellResult {
  std::uint64_t samples = 0;
  double median_ns = 0, p99_ns = 0, mean_ns = 0, pairs_per_s = 0;
  // The most device memory the process held during the cell (warm-up included) beyond what it held
  // after creating its context; -1 without NVML. It includes what earlier cells of the same process
  // left cached: for a cell's own, run it alone in a process.
  double peak_mib = -1;
  // --idle-ms: MiB held (as peak_mib, above the baseline) once every thread stopped, and after the idle
  // phase's synchronizations; -1 without NVML or without the phase.
  double stopped_mib = -1, idle_mib = -1;
};

std::string format_size(std::uint64_t bytes) {
  char buffer[32];
  if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0) std::snprintf(buffer, sizeof buffer, "%lluG", (unsigned long long)(bytes >> 30));
  else if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0) std::snprintf(buffer, sizeof buffer, "%lluM", (unsigned long long)(bytes >> 20));
  else if (bytes >= (1ull << 10) && bytes % (1ull << 10) == 0) std::snprintf(buffer, sizeof buffer, "%lluK", (unsigned long long)(bytes >> 10));
  else std::snprintf(buffer, sizeof buffer, "%llu", (unsigned long long)bytes);
  return buffer;
}

// Without --label: "gpushim-<backend>" when gpushim is preloaded, else "none".
std::string default_label() {
  const char* preload = std::getenv("LD_PRELOAD");
  if (preload == nullptr || std::strstr(preload, "gpushim") == nullptr) return "none";
  const char* backend = std::getenv("GPUSHIM_BACKEND");
  return std::string("gpushim-") + (backend && *backend ? backend : "default");
}

// --- measurement -----------------------------------------------------------------------------------

// The cost of one steady_clock::now() pair, taken as the median of many back-to-back reads; subtracted
// from every sample so a 100 ns pair is not reported as 120 ns.
double clock_overhead_ns() {
  std::vector<std::int64_t> d(20001);
  for (auto& x : d) {
    const auto t0 = Clock::now();
    const auto t1 = Clock::now();
    x = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
  }
  std::nth_element(d.begin(), d.begin() + d.size() / 2, d.end());
  return double(d[d.size() / 2]);
}

struct ThreadPlan {
  Api api;
  Pattern pattern;
  StreamMode streams;
  std::uint64_t work_every;  // --streams on: pairs between two launches on the thread's stream
  std::uint64_t size;
  std::size_t window;
  std::uint64_t reps;
  double overhead_ns;
  Clock::time_point deadline;
  std::uint64_t seed;
  std::vector<std::atomic<void*>>* boxes;  // the handoff pattern's mailboxes, shared by the cell's threads
};

class PairRunner {
 public:
  explicit PairRunner(const ThreadPlan& plan) : plan_(plan), rng_(plan.seed) {
    if (plan.api == Api::async) CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (plan.streams == StreamMode::on) {
      CHECK_CUDA(cudaStreamCreateWithFlags(&work_stream_, cudaStreamNonBlocking));
      CHECK_CUDA(cudaMalloc(&work_block_, kStreamWorkBytes));
      launch_work();
    }
    slots_.assign(plan.pattern == Pattern::pairs || plan.pattern == Pattern::handoff ? 0 : plan.window, nullptr);
    if (plan.pattern == Pattern::handoff) {
      picks_.resize(1024);
      for (auto& p : picks_) p = std::uniform_int_distribution<std::size_t>(0, plan.boxes->size() - 1)(rng_);
    }
    if (plan.pattern == Pattern::random) {
      sizes_.resize(1024);
      std::uniform_real_distribution<double> u(std::log(double(kRandomMin)), std::log(double(kRandomMax)));
      for (auto& s : sizes_) s = std::clamp<std::uint64_t>(std::uint64_t(std::exp(u(rng_))), kRandomMin, kRandomMax);
      picks_.resize(1024);
      for (auto& p : picks_) p = std::uniform_int_distribution<std::size_t>(0, slots_.size() - 1)(rng_);
    }
    for (std::size_t i = 0; i < slots_.size(); ++i) slots_[i] = allocate(next_size());
  }
  ~PairRunner() {
    for (void* p : slots_) release(p);
    if (work_stream_) {
      CHECK_CUDA(cudaStreamSynchronize(work_stream_));
      CHECK_CUDA(cudaFree(work_block_));
      CHECK_CUDA(cudaStreamDestroy(work_stream_));
    }
    if (stream_) {
      CHECK_CUDA(cudaStreamSynchronize(stream_));
      CHECK_CUDA(cudaStreamDestroy(stream_));
    }
  }

  // One timed pair, returned in ns with the clock's cost removed.
  double timed_pair() {
    if (work_stream_ && ++pairs_since_work_ == plan_.work_every) launch_work();
    const std::uint64_t size = next_size();
    const auto t0 = Clock::now();
    switch (plan_.pattern) {
      case Pattern::pairs:
        release(allocate(size));
        break;
      case Pattern::window: {  // ring: the slot to refill holds the oldest block
        void*& slot = slots_[cursor_++ % slots_.size()];
        release(slot);
        slot = allocate(size);
        break;
      }
      case Pattern::random: {
        void*& slot = slots_[picks_[cursor_++ % picks_.size()]];
        release(slot);
        slot = allocate(size);
        break;
      }
      case Pattern::handoff: {
        std::atomic<void*>& box = (*plan_.boxes)[picks_[cursor_++ % picks_.size()]];
        release(box.exchange(allocate(size), std::memory_order_acq_rel));
        break;
      }
    }
    const auto t1 = Clock::now();
    const double ns = double(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    return std::max(0.0, ns - plan_.overhead_ns);
  }

 private:
  void launch_work() {
    pairs_since_work_ = 0;
    touch_byte<<<1, 1, 0, work_stream_>>>(static_cast<unsigned char*>(work_block_));
    CHECK_CUDA(cudaGetLastError());
  }
  std::uint64_t next_size() {
    return plan_.pattern == Pattern::random ? sizes_[size_cursor_++ % sizes_.size()] : plan_.size;
  }
  void* allocate(std::uint64_t size) {
    void* p = nullptr;
    if (plan_.api == Api::runtime) CHECK_CUDA(cudaMalloc(&p, size));
    else if (plan_.api == Api::async) CHECK_CUDA(cudaMallocAsync(&p, size, stream_));
    else if (plan_.api == Api::driver) {
      CUdeviceptr d = 0;
      check_driver(g_cu_mem_alloc(&d, size), "cuMemAlloc");
      p = reinterpret_cast<void*>(d);
    }
    else p = std::malloc(size);  // the CPU's own ceiling (a thread-local cache in glibc up to 1 KiB)
    return p;
  }
  void release(void* p) {
    if (p == nullptr) return;
    if (plan_.api == Api::runtime) CHECK_CUDA(cudaFree(p));
    else if (plan_.api == Api::async) CHECK_CUDA(cudaFreeAsync(p, stream_));
    else if (plan_.api == Api::driver) check_driver(g_cu_mem_free(reinterpret_cast<CUdeviceptr>(p)), "cuMemFree");
    else std::free(p);
  }

  const ThreadPlan& plan_;
  std::mt19937_64 rng_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t work_stream_ = nullptr;  // --streams on
  void* work_block_ = nullptr;
  std::uint64_t pairs_since_work_ = 0;
  std::vector<void*> slots_;
  std::vector<std::uint64_t> sizes_;
  std::vector<std::size_t> picks_;
  std::size_t cursor_ = 0, size_cursor_ = 0;
};

// --synchronize-every-us: the program's own thread that waits on the GPU now and then, from before the
// cell's threads start until they are done.
class Synchronizer {
 public:
  explicit Synchronizer(double every_us) {
    if (every_us <= 0) return;
    thread_ = std::thread([this, every_us] {
      CHECK_CUDA(cudaSetDevice(0));
      while (!stop_.load(std::memory_order_relaxed)) {
        CHECK_CUDA(cudaDeviceSynchronize());
        std::this_thread::sleep_for(std::chrono::nanoseconds(std::int64_t(every_us * 1e3)));
      }
    });
  }
  ~Synchronizer() {
    stop_.store(true, std::memory_order_relaxed);
    if (thread_.joinable()) thread_.join();
  }
  Synchronizer(const Synchronizer&) = delete;
  Synchronizer& operator=(const Synchronizer&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

CellResult run_cell(const Options& o, Api api, Pattern pattern, StreamMode streams, std::uint64_t size, int threads,
                    double overhead_ns, DeviceMemorySampler& memory) {
  memory.start();
  Synchronizer synchronizer(o.synchronize_every_us);
  std::vector<std::atomic<void*>> boxes(kHandoffBoxesPerThread * std::size_t(threads));
  for (std::atomic<void*>& box : boxes) box.store(nullptr);
  ThreadPlan plan{api, pattern, streams, o.work_every, size, 0, 0, overhead_ns, {}, o.seed, &boxes};
  const std::uint64_t per_thread_budget = kWindowBudget / std::uint64_t(threads);
  plan.window = pattern == Pattern::random ? kMaxWindow
                : std::clamp<std::uint64_t>(per_thread_budget / std::max<std::uint64_t>(size, 1), 1, kMaxWindow);

  // Calibrate on this thread: a few warm-up pairs, then the median of a few timed ones sets the number
  // of repetitions that fits the cell's time budget (so 1 GiB cells take tens of pairs, 256 B ones tens
  // of thousands).
  double estimate_ns = 0;
  {
    PairRunner runner(plan);
    for (int i = 0; i < 5; ++i) runner.timed_pair();
    std::vector<double> probe(15);
    for (double& x : probe) x = runner.timed_pair();
    std::nth_element(probe.begin(), probe.begin() + probe.size() / 2, probe.end());
    estimate_ns = std::max(probe[probe.size() / 2], 20.0);
  }
  const double budget_ns = o.cell_ms * 1e6;
  plan.reps = std::clamp<std::uint64_t>(std::uint64_t(budget_ns / (estimate_ns * threads)), kMinReps, kMaxReps);

  std::vector<std::vector<double>> samples(threads);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  // pairs_per_s counts only the time every thread runs: from the start until the first thread is done
  // (its repetitions or the deadline), and each thread's pairs finished before it saw that. Counted to
  // the last thread's end instead, a thread that started late or ran on a slower core ran alone at the
  // end, and the ratio to one thread measured the harness (host malloc+free, which shares nothing, got
  // only 5-8x from 16 threads that way).
  std::atomic<bool> first_done{false};
  Clock::time_point first_done_at{};
  std::vector<std::uint64_t> counted(threads, 0);
  // --idle-ms: the threads stay alive, idle, until the main thread's idle phase is over. A thread that
  // exits gives what it keeps back to the allocator (gpushim's returned lists and parked blocks); a
  // server's worker threads do not.
  std::atomic<int> stopped{0};
  std::atomic<bool> idle_over{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t]() {
      ThreadPlan mine = plan;
      mine.seed = o.seed * 1000003 + std::uint64_t(t);
      CHECK_CUDA(cudaSetDevice(0));
      PairRunner runner(mine);
      // Warm-up: first touches of the thread's caches, the pool's first growth, the driver's per-thread
      // state; not measured.
      const std::uint64_t warmup = std::min<std::uint64_t>(mine.reps / 4 + 5, 2000);
      const Clock::time_point warm_until =
          Clock::now() + std::chrono::nanoseconds(std::int64_t(o.warmup_ms * 1e6));
      std::vector<double> last_warm(15, 0.0);  // the warm-up's last pairs, for the repetitions below
      std::uint64_t warmed = 0;
      for (;; ++warmed) {
        if (warmed >= warmup && (o.warmup_ms == 0 || ((warmed & 15) == 0 && Clock::now() >= warm_until))) break;
        last_warm[warmed % last_warm.size()] = runner.timed_pair();
      }
      // The calibration above ran cold, on this thread's first pairs. Where those are slow and the warm
      // ones fast, it set a few hundred repetitions, and the cell's p99 was its slowest pair or two: one
      // thread at 1 GiB with a stream, after 16 threads had held 16 GiB, calibrated at ~600 us a pair and
      // ran 158 pairs of 170 ns median, "p99" 566 us (H200, twenty-fifth session). After a timed warm-up
      // the thread's own last pairs set them instead; --warmup-ms 0 (the cold start) keeps the calibration.
      if (o.warmup_ms > 0 && warmed >= last_warm.size()) {
        std::nth_element(last_warm.begin(), last_warm.begin() + last_warm.size() / 2, last_warm.end());
        const double warm_ns = std::max(last_warm[last_warm.size() / 2], 20.0);
        mine.reps = std::clamp<std::uint64_t>(std::uint64_t(budget_ns / (warm_ns * threads)), kMinReps, kMaxReps);
      }
      // Written (so its pages are touched) before the start: a page fault per 512 samples inside the
      // timed loop took the process's memory lock, which 16 threads then fought over.
      std::vector<double>& mine_samples = samples[t];
      mine_samples.assign(mine.reps, 0.0);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const Clock::time_point deadline = plan.deadline;
      std::uint64_t done = 0;
      bool counting = true;
      while (done < mine.reps) {
        // Checked before a pair, so a pair still running when the first thread finished is not counted.
        if (counting && first_done.load(std::memory_order_relaxed)) {
          counted[t] = done;
          counting = false;
        }
        mine_samples[done++] = runner.timed_pair();
        if ((done & 15) == 0 && Clock::now() > deadline) break;
      }
      mine_samples.resize(done);
      if (counting) {
        bool expected = false;
        if (first_done.compare_exchange_strong(expected, true)) first_done_at = Clock::now();
        counted[t] = done;
      }
      if (o.idle_ms > 0) {
        stopped.fetch_add(1);
        while (!idle_over.load(std::memory_order_acquire)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const Clock::time_point start = Clock::now();
  plan.deadline = start + std::chrono::nanoseconds(std::int64_t(budget_ns * kCellDeadlineFactor));
  go.store(true, std::memory_order_release);
  CellResult r;
  if (o.idle_ms > 0) {
    while (stopped.load() < threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const Clock::time_point idle_until = Clock::now() + std::chrono::nanoseconds(std::int64_t(o.idle_ms * 1e6));
    r.stopped_mib = double(memory.used_now()) / double(1 << 20);
    while (Clock::now() < idle_until) {
      CHECK_CUDA(cudaDeviceSynchronize());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    r.idle_mib = double(memory.used_now()) / double(1 << 20);
    if (!memory.available()) r.stopped_mib = r.idle_mib = -1;
    idle_over.store(true, std::memory_order_release);
  }
  for (auto& w : workers) w.join();
  for (std::atomic<void*>& box : boxes)  // what the handoff cell left in its mailboxes
    if (void* p = box.exchange(nullptr)) CHECK_CUDA(api == Api::host ? (std::free(p), cudaSuccess) : cudaFree(p));
  CHECK_CUDA(cudaDeviceSynchronize());
  const Clock::time_point end = first_done_at;
  const std::uint64_t peak_bytes = memory.stop();

  std::vector<double> all;
  for (auto& s : samples) all.insert(all.end(), s.begin(), s.end());
  if (memory.available()) r.peak_mib = double(peak_bytes) / double(1 << 20);
  r.samples = all.size();
  if (all.empty()) return r;
  std::sort(all.begin(), all.end());
  const std::size_t n = all.size();
  r.median_ns = n % 2 ? all[n / 2] : 0.5 * (all[n / 2 - 1] + all[n / 2]);
  r.p99_ns = all[std::min(n - 1, std::size_t(std::ceil(0.99 * double(n))) - 1)];
  double sum = 0;
  for (double x : all) sum += x;
  r.mean_ns = sum / double(n);
  const double seconds = std::chrono::duration<double>(end - start).count();
  std::uint64_t pairs_while_all_ran = 0;
  for (std::uint64_t c : counted) pairs_while_all_ran += c;
  r.pairs_per_s = seconds > 0 ? double(pairs_while_all_ran) / seconds : 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse_options(argc, argv, &o)) return 2;
  if (o.label.empty()) o.label = default_label();

  CHECK_CUDA(cudaSetDevice(0));
  CHECK_CUDA(cudaFree(nullptr));
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  if (std::find(o.apis.begin(), o.apis.end(), Api::driver) != o.apis.end()) find_driver_pair();
  bool wants_async = std::find(o.apis.begin(), o.apis.end(), Api::async) != o.apis.end();
  if (wants_async && o.idle_ms == 0) {
    // A warm pool: keep freed memory in the default pool instead of returning it at each synchronization
    // (the default threshold is 0), as an application that chose cudaMallocAsync for speed would. Not with
    // --idle-ms, whose phase asks what each allocator gives back: the pool's default.
    cudaMemPool_t pool = nullptr;
    CHECK_CUDA(cudaDeviceGetDefaultMemPool(&pool, 0));
    std::uint64_t keep_everything = UINT64_MAX;
    CHECK_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_everything));
  }

  const double overhead = clock_overhead_ns();
  DeviceMemorySampler memory(0);
  std::printf("alloc_bench: label %s, device %s, clock overhead %.0f ns per sample (subtracted), cell %.0f ms, "
              "warm-up 2000 pairs and %.0f ms, streams on: a launch every %llu pairs, cudaDeviceSynchronize "
              "every %.0f us (0: none)\n",
              o.label.c_str(), prop.name, overhead, o.cell_ms, o.warmup_ms, (unsigned long long)o.work_every,
              o.synchronize_every_us);
  std::printf("%-10s %-8s %-7s %-7s %-8s %7s %9s %11s %11s %13s %9s\n", "label", "api", "pattern", "streams", "size",
              "threads", "samples", "median_ns", "p99_ns", "pairs_per_s", "peak_MiB");

  FILE* csv = nullptr;
  if (!o.csv_path.empty()) {
    FILE* probe = std::fopen(o.csv_path.c_str(), "r");
    const bool is_new = probe == nullptr || std::fgetc(probe) == EOF;
    if (probe) std::fclose(probe);
    csv = std::fopen(o.csv_path.c_str(), "a");
    if (csv == nullptr) {
      std::fprintf(stderr, "alloc_bench: cannot open %s\n", o.csv_path.c_str());
      return 2;
    }
    if (is_new) std::fprintf(csv, "label,api,pattern,size_bytes,threads,samples,median_ns,p99_ns,mean_ns,pairs_per_s,streams,peak_mib\n");
  }

  // Every "off" cell before the first "on" cell: an allocator may change its free path for good once the
  // program has created a stream (gpushim did, docs/free-safety.md), which would leak into later "off" cells.
  std::vector<StreamMode> stream_modes = o.streams;
  std::stable_sort(stream_modes.begin(), stream_modes.end());
  stream_modes.erase(std::unique(stream_modes.begin(), stream_modes.end()), stream_modes.end());
  for (StreamMode streams : stream_modes)
  for (Api api : o.apis) {
    for (Pattern pattern : o.patterns) {
      const std::vector<std::uint64_t> sizes =
          pattern == Pattern::random ? std::vector<std::uint64_t>{0} : o.sizes;
      for (std::uint64_t size : sizes) {
        for (int threads : o.threads) {
          const CellResult r = run_cell(o, api, pattern, streams, size, threads, overhead, memory);
          const std::string size_text = pattern == Pattern::random ? "rand" : format_size(size);
          std::printf("%-10s %-8s %-7s %-7s %-8s %7d %9llu %11.0f %11.0f %13.0f %9.0f\n", o.label.c_str(), api_name(api),
                      pattern_name(pattern), streams_name(streams), size_text.c_str(), threads, (unsigned long long)r.samples,
                      r.median_ns, r.p99_ns, r.pairs_per_s, r.peak_mib);
          if (o.idle_ms > 0)
            std::printf("alloc_bench: idle: %s %s %s %s %d threads: %.0f MiB held when they stopped, %.0f MiB after "
                        "%.0f ms of cudaDeviceSynchronize every 10 ms (-1: no NVML)\n",
                        api_name(api), pattern_name(pattern), streams_name(streams), size_text.c_str(), threads,
                        r.stopped_mib, r.idle_mib, o.idle_ms);
          std::fflush(stdout);
          if (csv) {
            std::fprintf(csv, "%s,%s,%s,%llu,%d,%llu,%.1f,%.1f,%.1f,%.0f,%s,%.0f\n", o.label.c_str(), api_name(api),
                         pattern_name(pattern), (unsigned long long)size, threads,
                         (unsigned long long)r.samples, r.median_ns, r.p99_ns, r.mean_ns, r.pairs_per_s,
                         streams_name(streams), r.peak_mib);
            std::fflush(csv);
          }
        }
      }
    }
  }
  if (csv) std::fclose(csv);
  std::printf("alloc_bench: done (%s = %s)\n", o.label.c_str(), api_calls(o.apis.front()));
  return 0;
}
