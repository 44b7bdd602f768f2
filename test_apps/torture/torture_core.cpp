#include "test_apps/torture/torture_core.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_apps/cli_sizes.h"

namespace torture {
namespace {

using Clock = std::chrono::steady_clock;

// cudaMalloc's documented alignment; gpushim promises the same (docs/measured-facts.md, "Semantics").
constexpr std::uintptr_t kRequiredAlignment = 256;
// Races use blocks big enough that a reader and a writer overlap in time on the GPU, small enough that
// twelve of them per thread stay far inside the budget.
constexpr std::uint64_t kRaceMinSize = 4096;
constexpr std::uint64_t kRaceMaxSize = 64ull << 20;
// cudaMallocPitch rows: up to this many, so pitched blocks are 2-D for real but never absurdly tall.
constexpr std::uint64_t kMaxPitchRows = 64;

enum Kind { kSync = 0, kAsync = 1, kPitch = 2 };

struct LiveBlock {
  void* ptr;
  std::uint64_t bytes;
  std::uint32_t tag;
  Stream home;  // the stream its fill and verify run on (an async block may only be used there)
  Kind kind;
};

struct SharedState {
  SharedState(const Options& o, Clock::time_point d) : options(o), deadline(d) {}
  const Options& options;
  Clock::time_point deadline;
  std::atomic<std::uint64_t> live_bytes{0};
  std::atomic<std::uint32_t> next_tag{1};
  std::mutex merge_mutex;
  Result total;

  bool reserve(std::uint64_t bytes) {
    std::uint64_t current = live_bytes.load(std::memory_order_relaxed);
    do {
      if (current + bytes > options.budget) return false;
    } while (!live_bytes.compare_exchange_weak(current, current + bytes, std::memory_order_relaxed));
    return true;
  }
  void release(std::uint64_t bytes) { live_bytes.fetch_sub(bytes, std::memory_order_relaxed); }
};

class Worker {
 public:
  Worker(Device& device, SharedState& shared, int index)
      : device_(device), shared_(shared), options_(shared.options), rng_(options_.seed * 7919 + index) {}

  void run() {
    device_.bind_thread();
    const Stream reader = device_.create_stream(/*non_blocking=*/true);
    const Stream other_non_blocking = device_.create_stream(/*non_blocking=*/true);
    const Stream blocking = device_.create_stream(/*non_blocking=*/false);
    own_streams_ = {reader, other_non_blocking, blocking};
    streams_ = {legacy_default_stream(), per_thread_default_stream(), reader, other_non_blocking, blocking};
    counter_ = device_.new_counter();

    for (std::uint64_t op = 0;; ++op) {
      if (options_.iterations != 0 && op >= options_.iterations) break;
      if (Clock::now() >= shared_.deadline) break;
      if (options_.race_every > 0 && op % options_.race_every == std::uint64_t(options_.race_every - 1) &&
          result_.races < std::uint64_t(options_.max_races)) {
        race();
        continue;
      }
      const bool want_allocation = live_.empty() || uniform() < 0.55;
      if (want_allocation) {
        if (!allocate_random() && !live_.empty()) free_block(pick(live_.size()));
      } else {
        free_block(pick(live_.size()));
      }
    }
    while (!live_.empty()) free_block(live_.size() - 1);

    // The legacy stream does not wait for non-blocking streams: wait for each before reading the counter.
    for (Stream stream : streams_) device_.synchronize(stream);
    result_.mismatches = device_.read_counter(counter_);
    device_.free(counter_);
    for (Stream stream : own_streams_) device_.destroy_stream(stream);

    std::lock_guard<std::mutex> lock(shared_.merge_mutex);
    Result& total = shared_.total;
    total.blocks += result_.blocks;
    total.bytes += result_.bytes;
    total.mismatches += result_.mismatches;
    total.misaligned += result_.misaligned;
    total.races += result_.races;
    total.races_same_address += result_.races_same_address;
    for (int k = 0; k < 3; ++k) total.by_kind[k] += result_.by_kind[k];
    total.frees_sync += result_.frees_sync;
    total.frees_async += result_.frees_async;
    total.frees_cross_stream += result_.frees_cross_stream;
  }

 private:
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }
  std::size_t pick(std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_); }
  Stream any_stream() { return streams_[pick(streams_.size())]; }
  Stream any_stream_but(Stream excluded) {
    Stream s;
    do s = any_stream(); while (s == excluded);
    return s;
  }

  // Log-uniform, so 1 B..256 MiB gives as many tiny blocks as huge ones per decade.
  std::uint64_t random_size(std::uint64_t lo, std::uint64_t hi) {
    const double x = std::exp(std::uniform_real_distribution<double>(std::log(double(lo)),
                                                                     std::log(double(hi) + 1.0))(rng_));
    return std::clamp<std::uint64_t>(std::uint64_t(x), lo, hi);
  }

  void check_alignment(const void* ptr) {
    if (reinterpret_cast<std::uintptr_t>(ptr) % kRequiredAlignment != 0) {
      std::fprintf(stderr, "alloc_torture: pointer %p is not %zu-byte aligned\n", ptr,
                   std::size_t(kRequiredAlignment));
      ++result_.misaligned;
    }
  }

  std::uint32_t new_tag() { return shared_.next_tag.fetch_add(1, std::memory_order_relaxed); }

  void count_allocation(Kind kind, std::uint64_t bytes) {
    ++result_.blocks;
    result_.bytes += bytes;
    ++result_.by_kind[kind];
  }

  bool allocate_random() {
    std::uint64_t size = random_size(1, options_.max_size);
    if (!shared_.reserve(size)) return false;
    const double k = uniform();
    const Kind kind = k < 0.4 ? kSync : k < 0.8 ? kAsync : kPitch;
    const Stream home = any_stream();
    void* ptr = nullptr;
    std::uint64_t bytes = size;
    switch (kind) {
      case kSync:
        ptr = device_.allocate(size);
        break;
      case kAsync:
        ptr = device_.allocate_async(size, home);
        break;
      case kPitch: {
        const std::uint64_t height = 1 + pick(std::min<std::uint64_t>(kMaxPitchRows, size));
        const std::uint64_t width = (size + height - 1) / height;
        std::size_t pitch = 0;
        ptr = device_.allocate_pitch(width, height, &pitch);
        if (pitch < width) {
          std::fprintf(stderr, "alloc_torture: pitch %zu < width %llu\n", pitch, (unsigned long long)width);
          ++result_.misaligned;
          pitch = width;
        }
        bytes = std::uint64_t(pitch) * height;  // the whole allocation is ours to write
        if (bytes > size) shared_.live_bytes.fetch_add(bytes - size, std::memory_order_relaxed);
        else shared_.release(size - bytes);
        break;
      }
    }
    check_alignment(ptr);
    const std::uint32_t tag = new_tag();
    device_.fill(ptr, bytes, tag, home);
    live_.push_back(LiveBlock{ptr, bytes, tag, home, kind});
    count_allocation(kind, bytes);
    return true;
  }

  // Verifies the block on its stream, then frees it by one of the ways a program may: the verify kernel
  // may still be running when a plain free() returns, which is the point.
  void free_block(std::size_t index) {
    const LiveBlock block = live_[index];
    live_[index] = live_.back();
    live_.pop_back();
    device_.verify(block.ptr, block.bytes, block.tag, counter_, block.home);
    const std::size_t how = pick(4);
    if (how == 0 || how == 1) {
      if (block.kind == kAsync) {
        device_.free_async(block.ptr, block.home);
        ++result_.frees_async;
      } else {
        device_.free(block.ptr);
        ++result_.frees_sync;
      }
    } else if (how == 2) {
      // The mixed pairs: cudaFreeAsync of a cudaMalloc block, cudaFree of a cudaMallocAsync block. The
      // programming guide asks that a stream-ordered block's uses be complete before cudaFree.
      if (block.kind == kAsync) {
        device_.synchronize(block.home);
        device_.free(block.ptr);
        ++result_.frees_sync;
      } else {
        device_.free_async(block.ptr, block.home);
        ++result_.frees_async;
      }
    } else {
      // Freed on another stream, ordered after the block's last use by an event.
      const Stream other = any_stream_but(block.home);
      device_.order_after(other, block.home);
      device_.free_async(block.ptr, other);
      ++result_.frees_cross_stream;
    }
    shared_.release(block.bytes);
  }

  // The race naive reuse loses: a long reader on a non-blocking stream still verifies block A when the
  // host frees A; the same size is allocated at once and overwritten from another stream. A correct
  // allocator (the driver: cudaFree synchronizes; its pool: cross-stream reuse waits for the free's
  // event) never hands A's memory to B while the reader runs, so the reader counts no mismatch.
  void race() {
    const std::uint64_t size =
        random_size(kRaceMinSize, std::max(kRaceMinSize, std::min(kRaceMaxSize, options_.max_size)));
    if (!shared_.reserve(2 * size)) return;
    const bool stream_ordered = result_.races % 2 == 1;
    const Stream reader = streams_[2];
    static constexpr int kOverwriters[] = {3, 0, 1, 4};  // other non-blocking, legacy, per-thread, blocking
    const Stream overwriter = streams_[kOverwriters[(result_.races / 2) % 4]];
    const Kind kind = stream_ordered ? kAsync : kSync;

    const std::uint32_t tag_a = new_tag();
    void* a = stream_ordered ? device_.allocate_async(size, reader) : device_.allocate(size);
    check_alignment(a);
    device_.fill(a, size, tag_a, reader);
    // A must hold its pattern before the reader starts: otherwise a late fill of A could land after B's
    // fill and verify, and the overwrite would go unseen.
    device_.synchronize(reader);
    device_.spin_verify(a, size, tag_a, options_.spin_us, counter_, reader);
    if (stream_ordered) device_.free_async(a, reader);
    else device_.free(a);

    const std::uint32_t tag_b = new_tag();
    void* b = stream_ordered ? device_.allocate_async(size, overwriter) : device_.allocate(size);
    check_alignment(b);
    device_.fill(b, size, tag_b, overwriter);
    live_.push_back(LiveBlock{b, size, tag_b, overwriter, kind});

    shared_.release(size);  // A's share; B's stays reserved until B is freed
    count_allocation(kind, size);
    count_allocation(kind, size);
    if (stream_ordered) ++result_.frees_async;
    else ++result_.frees_sync;
    ++result_.races;
    if (a == b) ++result_.races_same_address;
  }

  Device& device_;
  SharedState& shared_;
  const Options& options_;
  std::mt19937_64 rng_;
  std::vector<Stream> own_streams_;
  std::vector<Stream> streams_;
  std::vector<LiveBlock> live_;
  unsigned long long* counter_ = nullptr;
  Result result_;
};

}  // namespace

bool parse_options(int argc, char** argv, Options* options) {
  CLI::App app{
      "Allocates, fills, verifies and frees random blocks from many threads and streams, and runs the\n"
      "free-safety race; exits 0 when every block kept its pattern, 1 on any mismatch, 2 on a failed\n"
      "CUDA call.",
      "alloc_torture"};
  std::string max_size, budget;
  app.add_option("--threads", options->threads, "host threads")->check(CLI::Range(1, 256));
  app.add_option("--seconds", options->seconds, "wall-clock bound of the random phase")->check(CLI::PositiveNumber);
  app.add_option("--iterations", options->iterations, "per-thread bound on operations; 0 = only --seconds");
  app.add_option("--max-size", max_size, "largest random block (a size: 256MiB, 2GB)")
      ->check(test_apps::size_check());
  app.add_option("--budget", budget, "live bytes of all threads together stay under this (a size)")
      ->check(test_apps::size_check());
  app.add_option("--spin-us", options->spin_us, "how long the long reader of a race keeps reading");
  app.add_option("--race-every", options->race_every, "one free-safety race every N operations")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-races", options->max_races, "races per thread")->check(CLI::NonNegativeNumber);
  app.add_option("--seed", options->seed, "random seed");
  if (!test_apps::parse_command_line(app, argc, argv)) return false;
  if (!max_size.empty()) options->max_size = test_apps::checked_size(max_size);
  if (!budget.empty()) options->budget = test_apps::checked_size(budget);
  return true;
}

Result run(Device& device, const Options& options) {
  SharedState shared(options, Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(options.seconds)));
  std::vector<std::thread> threads;
  threads.reserve(options.threads);
  for (int t = 0; t < options.threads; ++t)
    threads.emplace_back([&device, &shared, t]() { Worker(device, shared, t).run(); });
  for (std::thread& thread : threads) thread.join();
  device.synchronize_device();
  return shared.total;
}

int report(const std::string& variant, const Result& r) {
  std::printf("alloc_torture[%s]: allocations %llu cudaMalloc, %llu cudaMallocAsync, %llu cudaMallocPitch; "
              "frees %llu cudaFree, %llu cudaFreeAsync, %llu cross-stream; %llu races (%llu reused the "
              "freed address); %llu misaligned\n",
              variant.c_str(), (unsigned long long)r.by_kind[kSync], (unsigned long long)r.by_kind[kAsync],
              (unsigned long long)r.by_kind[kPitch], (unsigned long long)r.frees_sync,
              (unsigned long long)r.frees_async, (unsigned long long)r.frees_cross_stream,
              (unsigned long long)r.races, (unsigned long long)r.races_same_address,
              (unsigned long long)r.misaligned);
  std::printf("alloc_torture[%s]: %llu blocks, %llu bytes, %llu mismatches, %s\n", variant.c_str(),
              (unsigned long long)r.blocks, (unsigned long long)r.bytes, (unsigned long long)r.mismatches,
              r.passed() ? "PASS" : "FAIL");
  std::fflush(stdout);
  return r.passed() ? 0 : 1;
}

void fail(const char* call, const char* error_name, const char* error_text, const char* file, int line) {
  std::fprintf(stderr, "alloc_torture: %s:%d: %s failed: %s (%s)\n", file, line, call, error_name,
               error_text);
  std::fflush(stderr);
  std::fflush(stdout);
  // Other threads may be inside CUDA calls: leave without running static destructors or atexit handlers.
  std::_Exit(2);
}

}  // namespace torture
