// Fit of the provider backends on an LLM decoding loop whose KV cache grows by torch.cat every token
// (tests/decoding_workload.h): peak reserved / peak live on host memory, as `gpushim trace replay`
// measures it (every backend built by its registry factory with default settings, frees at once).
//
// Usage: kv_cache_fit_bench [--trace PATH] [--seed N] [--requests N]
//   Prints a Markdown table: one row per backend and schedule (requests back to back, and four at a
//   time stepped round-robin). --trace PATH also writes the interleaved schedule in the trace format,
//   with the addresses the vmm backend gave it, so `gpushim trace replay --backend all PATH` reproduces
//   the table's interleaved rows from the command line. GPUSHIM_ variables in the environment set the
//   backends' options (replay always uses the defaults).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "allocators/backend_registry.h"
#include "config/settings.h"
#include "providers/host_provider.h"
#include "tests/decoding_workload.h"
#include "tracing/trace_recorder.h"

namespace {

using namespace gpushim;
using testing::DecodingWorkload;
using testing::DecodingWorkloadOptions;

// The backends' GPUSHIM_ settings come from the environment (GPUSHIM_VMM_GROW_STEP=2MiB ... shows what a
// setting does to the fit); unset, they are the defaults that `gpushim trace replay` uses.
const char* from_environment(const char* name, void*) { return std::getenv(name); }

// Runs `workload` against a fresh `backend` over host memory. With `record`, every allocate/free is
// recorded as the program's cudaMalloc/cudaFree would be (device 0, legacy stream).
testing::WorkloadFit run(const BackendInfo& backend, const DecodingWorkload& workload, bool record) {
  const Settings settings = parse_settings(&from_environment, nullptr);
  HostProvider provider;
  std::unique_ptr<Allocator> allocator = backend.factory(provider, settings);
  if (!allocator) {
    testing::WorkloadFit none;
    none.failed = workload.ops.size();
    return none;
  }
  return testing::run_workload(workload, *allocator, provider, [&](const testing::WorkloadOp& op, void* block) {
    if (record)
      tracing::record(op.allocate ? tracing::EventKind::alloc : tracing::EventKind::free, 0, 0,
                      reinterpret_cast<std::uintptr_t>(block), op.bytes, backend.id);
  });
}

double gib(std::uint64_t bytes) { return double(bytes) / double(std::uint64_t{1} << 30); }

}  // namespace

int main(int argc, char** argv) {
  const char* trace_path = nullptr;
  DecodingWorkloadOptions options;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--trace") && i + 1 < argc) {
      trace_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) {
      options.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (!std::strcmp(argv[i], "--requests") && i + 1 < argc) {
      options.requests = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--trace PATH] [--seed N] [--requests N]\n", argv[0]);
      return 64;
    }
  }
  struct Schedule {
    const char* name;
    int concurrent;
  };
  const Schedule schedules[] = {{"back to back", 1}, {"4 at a time", 4}};
  std::printf("LLM decoding, KV cache grown by torch.cat: fp16, %d layers of width %zu, %d requests, batch "
              "%d-%d, prompt %d-%d, %d-%d tokens generated, seed %llu\n\n",
              options.layers, options.width, options.requests, options.min_batch, options.max_batch,
              options.min_prompt, options.max_prompt, options.min_generated, options.max_generated,
              static_cast<unsigned long long>(options.seed));
  std::printf("| schedule | backend | peak live GiB | peak reserved GiB | reserved / live | ns per op | failed |\n"
              "|---|---|---:|---:|---:|---:|---:|\n");
  for (const Schedule& schedule : schedules) {
    options.concurrent = schedule.concurrent;
    const DecodingWorkload workload = testing::make_decoding_workload(options);
    for (const char* name : {"vmm", "tiered", "buddy", "slab"}) {
      const BackendInfo* backend = find_backend(name);
      const bool record = trace_path && schedule.concurrent > 1 && !std::strcmp(name, "vmm");
      if (record && !tracing::start(trace_path, 0)) {
        std::fprintf(stderr, "cannot write %s\n", trace_path);
        return 1;
      }
      const testing::WorkloadFit r = run(*backend, workload, record);
      if (record) tracing::stop();
      std::printf("| %s | %s | %.3f | %.3f | %.3fx | %.0f | %llu |\n", schedule.name, name, gib(r.peak_live),
                  gib(r.peak_reserved), r.ratio(), r.ns_per_op, static_cast<unsigned long long>(r.failed));
      std::fflush(stdout);
    }
  }
  if (trace_path) std::printf("\ntrace of the interleaved schedule: %s\n", trace_path);
  return 0;
}
