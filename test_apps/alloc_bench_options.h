// alloc_bench's command line (test_apps/alloc_bench.cu). Plain C++, compiled by the host compiler: CLI11
// parses the options and config/'s size parser reads sizes as GPUSHIM_ variables do ("4K" = 4096,
// "2GB" = 2,000,000,000, "1GiB" = 2^30).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

// driver: cuMemAlloc+cuMemFree, found as libcudart finds them (cudaGetDriverEntryPointByVersion, which
// asks the driver's cuGetProcAddress, gpushim's under LD_PRELOAD): the same pair without libcudart's own
// share, so a table can split a cudaMalloc pair's time into the runtime's and the allocator's.
enum class Api { runtime, async, host, driver };
// handoff: each pair allocates a block and frees one another thread allocated (a block passed between
// threads), through a few mailboxes per thread that every thread swaps with.
enum class Pattern { pairs, window, random, handoff };
// off: the thread creates no stream. on: each thread first creates a non-blocking stream and keeps it
// carrying work (a one-thread kernel every Options::work_every pairs, outside the timed pair), so an
// allocator that fences frees while other streams carry work is measured on that path.
enum class StreamMode { off, on };

struct Options {
  std::vector<Api> apis = {Api::runtime};
  std::vector<Pattern> patterns = {Pattern::pairs, Pattern::window, Pattern::random};
  std::vector<StreamMode> streams = {StreamMode::off};
  std::vector<std::uint64_t> sizes = {256, 4ull << 10, 64ull << 10, 1ull << 20, 16ull << 20, 256ull << 20,
                                      1ull << 30};
  std::vector<int> threads = {1, 4, 16};
  double cell_ms = 300;
  // --streams on: a kernel on the thread's stream every this many pairs. 64 keeps the stream carrying
  // work nearly all the time (a pair is 0.1-100 us, a launch ~2-5 us of host time); the launches are
  // untimed but inside pairs_per_s, and 16 threads' launches meet on the driver's own lock, which bounds
  // what any allocator can reach there (docs/perf-notes.md, "Nineteenth session"). A larger value
  // measures the same fenced path with less of the program's own launching around it.
  std::uint64_t work_every = 64;
  // Each thread's warm-up, before the timed pairs: at least 2000 pairs (fewer in a short cell) and at
  // least this many milliseconds, all threads at once. A count alone ended within a few ms, while the
  // allocator under test may still be growing to the working set of 16 threads with a stream (an
  // arena climbs for ~100 ms at 1 MiB), and the 50,000 timed pairs of a thread then measured mostly
  // that climb. 0 keeps the count alone: the cold start.
  double warmup_ms = 0;
  // A thread of the program's own that calls cudaDeviceSynchronize every this many microseconds through
  // each cell, warm-up included (0: none), as a program that waits on its GPU from another thread does.
  // gpushim runs its idle checks after a context synchronization (router::after_context_synchronize):
  // this measures what they cost the pairs.
  double synchronize_every_us = 0;
  // After each cell's timed pairs, with its threads still alive: cudaDeviceSynchronize every 10 ms for this
  // long, then the memory held (0: none).
  double idle_ms = 0;
  std::string label;
  std::string csv_path;
  std::uint64_t seed = 1;
};

// Fills `o` from argv. --help prints the usage and exits 0; a bad option prints what is wrong and the
// usage, and returns false.
bool parse_options(int argc, char** argv, Options* o);
