// The host cost of gpushim's hot path without a GPU: alloc+free pairs through the real libgpushim.so
// (interposer, router, free fences, backend) over the fake driver (tests/fake_driver/fake_libcuda.cpp,
// whose calls cost a few ns: what this measures is gpushim, plus a stand-in for the driver's own
// cuCtxGetCurrent and event calls).
//
//   router_pair_bench [--backends none,passthrough,vmm,...] [--sizes 256,65536,1048576] [--threads 1,4,16]
//                     [--pairs N] [--modes fenced,legacy,async,static] [--library PATH]
// --library: another libgpushim.so to preload (an older build, for before/after tables).
//
// The parent re-runs itself once per backend with LD_PRELOAD=libgpushim.so and GPUSHIM_BACKEND set
// ("none": no preload, the fake driver alone, the floor passthrough is compared against). A child
// (ROUTER_PAIR_BENCH_CHILD=1) prints one row per size and thread count: the median over batches of
// 256 pairs of the ns per pair of one thread, its 99th percentile, the pairs per second of all threads
// together and per thread, and the scaling over one thread's pairs per second. Like
// test_apps/alloc_bench's "pairs" pattern: cuMemAlloc then cuMemFree.
// Modes: "fenced": every thread first creates a non-blocking stream and keeps it carrying work (a
// 1-byte cuMemsetD8Async on a block of its own once per batch of kBatch pairs, inside the timed batch),
// so gpushim must order frees against another stream's work: the free fences. A stream that carries no
// work need not force fencing, so creating one is not enough. "legacy" creates none, so the router
// reuses cuMemFree'd blocks at once (legacy-ordered reuse). "async": the pairs are cuMemAllocAsync +
// cuMemFreeAsync on the thread's own non-blocking stream, which carries no other work (the stream-ordered
// path that a shared runtime's cudaMallocAsync/cudaFreeAsync reach, shim/runtime_entry_points.cpp).
// "static": the pairs are cudaMalloc + cudaFree of a fake static runtime linked into this program
// (tests/fake_driver/fake_static_cudart_entries.S), which gpushim redirects to its own functions at load
// (shim/static_runtime_redirects.cpp), as it does a real one; no stream.
//
// Instructions per pair: scripts/instructions_per_pair.sh runs one child per cell under callgrind with
// --instr-atstart=no; the child switches instrumentation on only around its timed pairs (the
// CALLGRIND_ macros below are no-ops outside valgrind), so callgrind's total / pairs is the cost of one
// pair (plus 1/kBatch of a memset and a clock read), without the process's start and warm-up.
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <unistd.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_START_INSTRUMENTATION
#define CALLGRIND_STOP_INSTRUMENTATION
#endif

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kBatch = 256;  // pairs per timed batch: amortises the clock, keeps fence closes in the sample

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

struct Options {
  std::vector<std::string> backends = {"none", "passthrough", "vmm", "buddy", "slab", "tiered", "mempool"};
  std::vector<std::size_t> sizes = {256, 65536, 1 << 20};
  std::vector<int> threads = {1, 4, 16};
  std::vector<std::string> modes = {"fenced"};
  long pairs = 200000;  // per thread and cell
  std::string library = GPUSHIM_LIBRARY;
};

bool parse(int argc, char** argv, Options* o) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--backends") {
      o->backends = split(value);
    } else if (flag == "--sizes") {
      o->sizes.clear();
      for (const std::string& s : split(value)) o->sizes.push_back(std::strtoull(s.c_str(), nullptr, 10));
    } else if (flag == "--threads") {
      o->threads.clear();
      for (const std::string& s : split(value)) o->threads.push_back(std::atoi(s.c_str()));
    } else if (flag == "--modes") {
      o->modes = split(value);
    } else if (flag == "--library") {
      o->library = value;
    } else if (flag == "--pairs") {
      o->pairs = std::atol(value.c_str());
    } else {
      return false;
    }
  }
  return (argc - 1) % 2 == 0;
}

struct Cell {
  double median_ns = 0, p99_ns = 0, pairs_per_s = 0;
  bool failed = false;
};

enum class Mode { legacy, fenced, async, static_runtime };

// A thread's stream for the fenced and async modes, with the block the fenced mode's work writes.
struct StreamWork {
  CUstream stream = nullptr;
  CUdeviceptr block = 0;  // fenced mode only: no block, no work
  bool start(Mode mode) {
    if (mode == Mode::legacy || mode == Mode::static_runtime) return true;
    if (cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) return false;
    return mode != Mode::fenced || cuMemAlloc(&block, 512) == CUDA_SUCCESS;
  }
  bool submit() const { return block == 0 || cuMemsetD8Async(block, 0, 1, stream) == CUDA_SUCCESS; }
  ~StreamWork() {
    if (block) cuMemFree(block);
    if (stream) cuStreamDestroy(stream);
  }
};

#if defined(ROUTER_PAIR_BENCH_STATIC_RUNTIME)
bool static_runtime_pair(std::size_t bytes) {
  void* p = nullptr;
  return cudaMalloc(&p, bytes) == cudaSuccess && cudaFree(p) == cudaSuccess;
}
#else
bool static_runtime_pair(std::size_t) { return false; }  // built without the fake static runtime
#endif

Cell run_cell(std::size_t bytes, int threads, long pairs, Mode mode) {
  std::vector<std::vector<double>> samples(threads);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false}, failed{false};
  std::vector<Clock::time_point> finished(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      StreamWork work;
      if (!work.start(mode)) failed = true;
      const CUstream stream = mode == Mode::async ? work.stream : nullptr;  // the async pairs' stream
      auto pair = [&] {
        CUdeviceptr p = 0;
        if (mode == Mode::static_runtime) {
          if (!static_runtime_pair(bytes)) failed = true;
        } else if (stream != nullptr) {
          if (cuMemAllocAsync(&p, bytes, stream) != CUDA_SUCCESS || cuMemFreeAsync(p, stream) != CUDA_SUCCESS)
            failed = true;
        } else if (cuMemAlloc(&p, bytes) != CUDA_SUCCESS || cuMemFree(p) != CUDA_SUCCESS) {
          failed = true;
        }
      };
      for (int i = 0; i < 4 * kBatch; ++i) {  // thread caches, first growth, first fences
        if (i % kBatch == 0 && !work.submit()) failed = true;
        pair();
      }
      samples[t].reserve(pairs / kBatch + 1);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      if (threads == 1) CALLGRIND_START_INSTRUMENTATION;
      for (long done = 0; done < pairs; done += kBatch) {
        const auto t0 = Clock::now();
        if (!work.submit()) failed = true;
        for (int i = 0; i < kBatch; ++i) pair();
        const auto t1 = Clock::now();
        samples[t].push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / kBatch);
      }
      if (threads == 1) CALLGRIND_STOP_INSTRUMENTATION;
      finished[t] = Clock::now();
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const auto start = Clock::now();
  go.store(true, std::memory_order_release);
  for (std::thread& w : workers) w.join();
  const auto end = *std::max_element(finished.begin(), finished.end());
  std::vector<double> all;
  for (const auto& s : samples) all.insert(all.end(), s.begin(), s.end());
  std::sort(all.begin(), all.end());
  Cell cell;
  cell.failed = failed;
  if (all.empty()) return cell;
  cell.median_ns = all[all.size() / 2];
  cell.p99_ns = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  cell.pairs_per_s = double(pairs) * threads / std::chrono::duration<double>(end - start).count();
  return cell;
}

int child(const Options& o) {
  const char* backend = std::getenv("GPUSHIM_BACKEND");
  const char* mode_name = std::getenv("ROUTER_PAIR_BENCH_MODE");
  const std::string named = mode_name ? mode_name : "legacy";
  const Mode mode = named == "fenced"   ? Mode::fenced
                    : named == "async"  ? Mode::async
                    : named == "static" ? Mode::static_runtime
                                        : Mode::legacy;
  const std::string label = std::string(std::getenv("LD_PRELOAD") ? (backend ? backend : "tiered") : "none") +
                            (mode == Mode::fenced ? "" : "/" + named);
  if (cuInit(0) != CUDA_SUCCESS) return 1;
  for (std::size_t bytes : o.sizes) {
    double one_thread_rate = 0;
    for (int threads : o.threads) {
      const Cell c = run_cell(bytes, threads, o.pairs, mode);
      if (threads == 1) one_thread_rate = c.pairs_per_s;
      std::printf("%-19s %10zu %7d %10.1f %10.1f %12.0f %12.0f %8.2f%s\n", label.c_str(), bytes, threads, c.median_ns,
                  c.p99_ns, c.pairs_per_s, c.pairs_per_s / threads,
                  one_thread_rate > 0 ? c.pairs_per_s / one_thread_rate : 0.0,
                  c.failed ? "  FAILED" : "");
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, &o)) {
    std::fprintf(stderr, "usage: %s [--backends a,b] [--sizes 256,65536] [--threads 1,4,16] [--pairs N] [--modes fenced,legacy,async,static] [--library PATH]\n", argv[0]);
    return 2;
  }
  if (std::getenv("ROUTER_PAIR_BENCH_CHILD")) return child(o);

  std::printf("# ns per cuMemAlloc+cuMemFree pair over the fake driver, %u hardware threads\n",
              std::thread::hardware_concurrency());
  std::printf("%-19s %10s %7s %10s %10s %12s %12s %8s\n", "backend", "bytes", "threads", "median_ns", "p99_ns",
              "pairs/s", "per_thread", "scaling");
  std::fflush(stdout);
  for (const std::string& mode : o.modes)
  for (const std::string& backend : o.backends) {
    const pid_t pid = fork();
    if (pid == 0) {
      setenv("ROUTER_PAIR_BENCH_CHILD", "1", 1);
      setenv("ROUTER_PAIR_BENCH_MODE", mode.c_str(), 1);
      setenv("LD_LIBRARY_PATH", FAKE_DRIVER_DIR, 1);
      if (backend != "none") {
        setenv("LD_PRELOAD", o.library.c_str(), 1);
        setenv("GPUSHIM_BACKEND", backend.c_str(), 1);
      } else {
        unsetenv("LD_PRELOAD");
      }
      // The path, not "/proc/self/exe" itself: under valgrind (scripts/instructions_per_pair.sh) an exec of
      // that link would start the tool's own binary, while readlink answers the bench's path.
      char self[4096];
      const ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
      if (length <= 0) _exit(127);
      self[length] = '\0';
      execv(self, argv);
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) std::printf("%-19s child failed (status %d)\n", backend.c_str(), status);
  }
  return 0;
}
