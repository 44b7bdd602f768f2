#include "test_apps/alloc_bench_options.h"

#include <cstdio>
#include <map>

#include "test_apps/cli_sizes.h"

bool parse_options(int argc, char** argv, Options* o) {
  CLI::App app{
      "Host time of one allocation + free pair, by size, thread count and pattern.\n"
      "  runtime = cudaMalloc/cudaFree, async = cudaMallocAsync/cudaFreeAsync on a warm default pool,\n"
      "  host = malloc/free (no GPU memory: what this CPU gives the same loop on 1 and N threads),\n"
      "  driver = cuMemAlloc/cuMemFree found as libcudart finds them (the pair without the runtime's share).\n"
      "  pairs: alloc then free; window: free the oldest of up to 64 live blocks; random: sizes\n"
      "  log-uniform in 256 B..16 MiB over 64 live blocks (its size column reads 'rand'); handoff: alloc,\n"
      "  then free a block that another thread allocated (swapped through 4 mailboxes per thread).\n"
      "  --streams on: each thread first creates a non-blocking stream and launches a one-thread kernel\n"
      "  on it every --work-every pairs (64; not timed), so the pairs run while a second stream carries work; all\n"
      "  'off' cells run before the first 'on' cell (creating a stream can change an allocator for good).\n"
      "  --csv appends one line per cell (header when the file is new):\n"
      "  label,api,pattern,size_bytes,threads,samples,median_ns,p99_ns,mean_ns,pairs_per_s,streams",
      "alloc_bench"};
  const std::map<std::string, Api> apis{{"runtime", Api::runtime}, {"cudaMalloc", Api::runtime},
                                        {"async", Api::async}, {"cudaMallocAsync", Api::async},
                                        {"host", Api::host}, {"malloc", Api::host},
                                        {"driver", Api::driver}, {"cuMemAlloc", Api::driver}};
  const std::map<std::string, Pattern> patterns{
      {"pairs", Pattern::pairs}, {"window", Pattern::window}, {"random", Pattern::random},
      {"handoff", Pattern::handoff}};
  const std::map<std::string, StreamMode> streams{{"off", StreamMode::off}, {"on", StreamMode::on}};
  std::vector<std::string> sizes;
  bool quick = false;
  app.add_option("--api", o->apis, "runtime,async,host,driver")->delimiter(',')->transform(CLI::CheckedTransformer(apis));
  app.add_option("--patterns", o->patterns, "pairs,window,random,handoff")
      ->delimiter(',')
      ->transform(CLI::CheckedTransformer(patterns));
  app.add_option("--streams", o->streams, "off,on")->delimiter(',')->transform(CLI::CheckedTransformer(streams));
  app.add_option("--sizes", sizes, "sizes, e.g. 256,4K,64K,1M,16M,256M,1G")
      ->delimiter(',')
      ->check(test_apps::size_check());
  app.add_option("--threads", o->threads, "thread counts, e.g. 1,4,16")->delimiter(',')->check(CLI::Range(1, 1024));
  app.add_option("--cell-ms", o->cell_ms, "time budget of one cell")->check(CLI::PositiveNumber);
  app.add_option("--work-every", o->work_every, "--streams on: a kernel on the thread's stream every N pairs (64)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 30));
  app.add_option("--warmup-ms", o->warmup_ms,
                 "each thread's warm-up before the timed pairs: 2000 pairs and at least this long, all threads at once")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--synchronize-every-us", o->synchronize_every_us,
                 "another thread calls cudaDeviceSynchronize every N us through each cell (0: none)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--idle-ms", o->idle_ms,
                 "after each cell, its threads alive and idle: cudaDeviceSynchronize every 10 ms for MS, then an "
                 "'idle' line with the memory held before and after (0: none)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--label", o->label, "first CSV column (default: gpushim-<backend> under gpushim, else none)");
  app.add_option("--csv", o->csv_path, "append one CSV line per cell to FILE");
  app.add_option("--seed", o->seed, "random seed");
  app.add_flag("--quick", quick, "100 ms cells");
  if (!test_apps::parse_command_line(app, argc, argv)) return false;
  if (quick) o->cell_ms = 100;
  if (!sizes.empty()) {
    o->sizes.clear();
    for (const std::string& text : sizes) o->sizes.push_back(test_apps::checked_size(text));
  }
  if (o->apis.empty() || o->patterns.empty() || o->sizes.empty() || o->threads.empty() || o->streams.empty()) {
    std::fprintf(stderr, "alloc_bench: --api, --patterns, --sizes, --threads and --streams need at least one value\n");
    return false;
  }
  return true;
}
