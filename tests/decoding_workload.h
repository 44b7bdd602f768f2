// A deterministic synthetic LLM decoding loop, as a list of allocate/free operations: the allocation
// pattern of a PyTorch decoder whose KV cache grows by `torch.cat` every token (fp16, 8 layers of width
// 2048, batch 1-32), run with PyTorch's cache off so that every tensor is one cudaMalloc/cudaFree.
//
// Per request (batch B, prompt P, G generated tokens), every layer of every step with T new tokens
// (T = P for the prefill, then 1 per token) and L tokens already cached does what the model does:
//   q, k, v = projections            3 x B*T*width*2 bytes
//   K = cat(K, k); V = cat(V, v)      alloc B*(L+T)*row, then free the old B*L*row block and k (v)
//   attention output, output proj.    B*T*width*2 each, freed as the next one is made
//   MLP up, activation, down          B*T*width*8, B*T*width*8, B*T*width*2
//   residual                          B*T*width*2, replaces the layer's input
// where row = width*2 bytes. Each new cache block is one row per sequence larger than the one it
// replaces, and is allocated while that one is still live: the pattern that defeats a fit which only
// reuses holes of the same size.
//
// Requests come `concurrent` at a time: with 1 they run back to back; with more, a scheduler steps the
// open requests round-robin one token each (continuous batching without merging batches), and a
// finished request is replaced by the next, so caches of many batch sizes and lengths grow at once.
//
// Used by tests/kv_cache_fit_test.cpp (the fit bound) and bench/kv_cache_fit_bench.cpp (the table and a
// trace for `gpushim trace replay`). docs/perf-notes.md, "Fit on a growing KV cache".
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "allocators/allocator.h"
#include "providers/memory_provider.h"

namespace gpushim::testing {

struct DecodingWorkloadOptions {
  int layers = 8;
  std::size_t width = 2048;
  std::size_t element_bytes = 2;  // fp16
  int requests = 24;
  int concurrent = 1;        // requests decoded at once (1: back to back)
  int min_batch = 1, max_batch = 32;
  int min_prompt = 16, max_prompt = 512;
  int min_generated = 32, max_generated = 512;
  std::uint64_t seed = 1;
};

// One operation: allocate `bytes` as block `id`, or free block `id` (allocated earlier with `bytes`).
// Ids are reused once freed, so a table of max_live_ids() entries maps them to pointers.
struct WorkloadOp {
  bool allocate;
  std::uint32_t id;
  std::size_t bytes;
};

struct DecodingWorkload {
  std::vector<WorkloadOp> ops;
  std::uint32_t id_count = 0;       // ids used: every id is below this
  std::uint64_t peak_live_bytes = 0;  // by construction, for a check of the consumer's own count
};

namespace detail {

class DecodingWorkloadBuilder {
 public:
  explicit DecodingWorkloadBuilder(const DecodingWorkloadOptions& o) : o_(o), rng_(o.seed) {}

  DecodingWorkload build() {
    std::vector<Request> open;
    int started = 0;
    auto start_next = [&] {
      Request r;
      r.batch = draw(o_.min_batch, o_.max_batch);
      r.prompt = draw(o_.min_prompt, o_.max_prompt);
      r.generated = draw(o_.min_generated, o_.max_generated);
      r.keys.assign(static_cast<std::size_t>(o_.layers), kNone);
      r.values.assign(static_cast<std::size_t>(o_.layers), kNone);
      ++started;
      open.push_back(r);
    };
    while (started < o_.requests && static_cast<int>(open.size()) < o_.concurrent) start_next();
    while (!open.empty()) {
      for (std::size_t i = 0; i < open.size();) {
        Request& r = open[i];
        step(r);
        if (r.done >= r.generated) {
          finish(r);
          open.erase(open.begin() + static_cast<std::ptrdiff_t>(i));
          if (started < o_.requests) start_next();  // joins at the end of this round
          continue;
        }
        ++i;
      }
    }
    out_.id_count = next_id_;
    return std::move(out_);
  }

 private:
  static constexpr std::uint32_t kNone = ~std::uint32_t{0};
  struct Request {
    int batch = 0, prompt = 0, generated = 0;
    int cached = 0;  // tokens in the KV cache
    int done = 0;    // tokens generated
    std::vector<std::uint32_t> keys, values;
  };

  // Uniform in [lo, hi] from the raw engine: std::uniform_int_distribution differs between standard
  // libraries, and the pattern must be the same everywhere.
  int draw(int lo, int hi) { return lo + static_cast<int>(rng_() % static_cast<std::uint64_t>(hi - lo + 1)); }

  std::uint32_t allocate(std::size_t bytes) {
    std::uint32_t id;
    if (!free_ids_.empty()) {
      id = free_ids_.back();
      free_ids_.pop_back();
    } else {
      id = next_id_++;
      sizes_.push_back(0);
    }
    sizes_[id] = bytes;
    out_.ops.push_back({true, id, bytes});
    live_ += bytes;
    if (live_ > out_.peak_live_bytes) out_.peak_live_bytes = live_;
    return id;
  }

  void release(std::uint32_t id) {
    out_.ops.push_back({false, id, sizes_[id]});
    live_ -= sizes_[id];
    free_ids_.push_back(id);
  }

  // One forward pass of `r` over its T new tokens (the prompt first, then one token).
  void step(Request& r) {
    const std::size_t tokens = r.cached == 0 ? static_cast<std::size_t>(r.prompt) : 1;
    const std::size_t rows = static_cast<std::size_t>(r.batch) * tokens;  // activation rows
    const std::size_t act = rows * o_.width * o_.element_bytes;            // one activation tensor
    const std::size_t row = o_.width * o_.element_bytes;                   // one token of one sequence
    const std::size_t batch = static_cast<std::size_t>(r.batch);
    std::uint32_t hidden = allocate(act);  // embedding of the new tokens
    for (int layer = 0; layer < o_.layers; ++layer) {
      const std::uint32_t q = allocate(act);
      const std::uint32_t k = allocate(act);
      const std::uint32_t v = allocate(act);
      const std::size_t length = static_cast<std::size_t>(r.cached) + tokens;
      for (std::vector<std::uint32_t>* cache : {&r.keys, &r.values}) {
        std::uint32_t& slot = (*cache)[static_cast<std::size_t>(layer)];
        const std::uint32_t grown = allocate(batch * length * row);  // torch.cat((old, new), dim=seq)
        if (slot != kNone) release(slot);
        slot = grown;
      }
      release(k);
      release(v);
      const std::uint32_t attention = allocate(act);
      release(q);
      const std::uint32_t projected = allocate(act);
      release(attention);
      const std::uint32_t up = allocate(4 * act);
      const std::uint32_t activated = allocate(4 * act);
      release(up);
      const std::uint32_t down = allocate(act);
      release(activated);
      const std::uint32_t residual = allocate(act);  // hidden + projected + down
      release(down);
      release(projected);
      release(hidden);
      hidden = residual;
    }
    const std::uint32_t logits = allocate(act);  // the last norm, standing in for the vocabulary head
    release(hidden);
    release(logits);
    r.cached += static_cast<int>(tokens);
    ++r.done;  // the prefill yields the first token, each later step one more
  }

  void finish(Request& r) {
    for (int layer = 0; layer < o_.layers; ++layer) {
      release(r.keys[static_cast<std::size_t>(layer)]);
      release(r.values[static_cast<std::size_t>(layer)]);
    }
  }

  DecodingWorkloadOptions o_;
  std::mt19937_64 rng_;
  DecodingWorkload out_;
  std::vector<std::size_t> sizes_;
  std::vector<std::uint32_t> free_ids_;
  std::uint32_t next_id_ = 0;
  std::uint64_t live_ = 0;
};

}  // namespace detail

inline DecodingWorkload make_decoding_workload(const DecodingWorkloadOptions& options) {
  return detail::DecodingWorkloadBuilder(options).build();
}

struct WorkloadFit {
  std::uint64_t peak_reserved = 0;  // most bytes `provider` had mapped after an allocation
  std::uint64_t peak_live = 0;      // most requested bytes live at once
  std::uint64_t failed = 0;         // allocations that returned nullptr (their frees are skipped)
  double ns_per_op = 0;             // time inside allocate/deallocate only
  double ratio() const { return peak_live ? double(peak_reserved) / double(peak_live) : 0; }
};

// Runs `workload` against `allocator`, whose memory comes from `provider`, measuring as `gpushim trace
// replay` does: frees take effect at once, reserved is sampled after every allocation. `observe`, if
// given, is called after each served operation with (op, block).
template <typename Observe>
WorkloadFit run_workload(const DecodingWorkload& workload, Allocator& allocator, const MemoryProvider& provider,
                         Observe&& observe) {
  using clock = std::chrono::steady_clock;
  WorkloadFit fit;
  std::vector<void*> blocks(workload.id_count, nullptr);
  std::uint64_t live = 0;
  clock::duration spent{};
  for (const WorkloadOp& op : workload.ops) {
    void*& block = blocks[op.id];
    if (!op.allocate) {
      if (!block) continue;
      const auto t0 = clock::now();
      allocator.deallocate(block, op.bytes, 0);
      spent += clock::now() - t0;
      observe(op, block);
      live -= op.bytes;
      block = nullptr;
      continue;
    }
    const auto t0 = clock::now();
    block = allocator.allocate(op.bytes, 0);
    spent += clock::now() - t0;
    if (!block) {
      ++fit.failed;
      continue;
    }
    observe(op, block);
    live += op.bytes;
    fit.peak_live = std::max(fit.peak_live, live);
    fit.peak_reserved = std::max<std::uint64_t>(fit.peak_reserved, provider.bytes_mapped());
  }
  if (!workload.ops.empty())
    fit.ns_per_op = double(std::chrono::duration_cast<std::chrono::nanoseconds>(spent).count()) /
                    double(workload.ops.size());
  return fit;
}

inline WorkloadFit run_workload(const DecodingWorkload& workload, Allocator& allocator,
                                const MemoryProvider& provider) {
  return run_workload(workload, allocator, provider, [](const WorkloadOp&, void*) {});
}

}  // namespace gpushim::testing
