// What happens to a block between the program's free and its backend getting it back, as `gpushim trace
// replay --gpu-lag-events/--gpu-lag-us/--fence-batches` models it (analysis/trace_replay.h, GpuLag):
// LaggedFrees holds each freed block until the GPU has passed its free; FenceBatches first gathers frees
// into gpushim's fence batches, as the router does (docs/free-safety.md). FreedBlocks picks one of the two.
// Every block comes back through `give_back`, in the order the model releases them.
#pragma once

#include <cstdint>
#include <deque>
#include <iterator>
#include <list>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "allocators/allocator.h"
#include "analysis/trace_replay.h"
#include "config/settings.h"          // kDefaultStreamListIdleNs
#include "router/free_fence_queue.h"  // the batch and list rules and the idle check: the model follows the router's

namespace gpushim::tracing {

struct ReplayBlock {
  void* pointer;
  std::uint64_t size;          // what the program asked for: counts as live
  std::uint64_t backend_size;  // what the backend was asked for, and is given back
  std::int32_t device;
  StreamHandle stream;
};

namespace replay_detail {

// CU_STREAM_LEGACY and CU_STREAM_PER_THREAD, as the router reads stream handles (router/router.cpp):
// an async call on stream 0 means the legacy stream, and async frees on the per-thread default stream
// take the fenced cuMemFree path, since that one handle names a different stream on every thread.
inline constexpr std::uint64_t kLegacyStream = 0x1;
inline constexpr std::uint64_t kPerThreadStream = 0x2;
inline constexpr std::uint64_t kNsPerMicrosecond = 1000;

inline std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) { return a > ~b ? ~std::uint64_t{0} : a + b; }
inline std::uint64_t saturating_mul(std::uint64_t a, std::uint64_t b) {
  return b && a > ~std::uint64_t{0} / b ? ~std::uint64_t{0} : a * b;
}
inline std::uint64_t stream_of(std::uint64_t stream) { return stream ? stream : kLegacyStream; }
// The router's block size: the request rounded up to the backends' alignment.
inline std::uint64_t rounded(std::uint64_t size) {
  return saturating_add(size, kMinAlignment - 1) / kMinAlignment * kMinAlignment;
}
// A free that goes to its stream's list rather than to a fenced batch.
inline bool on_stream_list(bool async, std::uint64_t free_stream) { return async && free_stream != kPerThreadStream; }

}  // namespace replay_detail

// Blocks freed while the GPU may still use them: in free order, which is also the order they become
// reusable (call indices and trace times only grow). An async-freed block also sits in its stream's
// list, from which an allocation on that stream of the same rounded size takes it back at once, as
// gpushim's per-stream free lists do.
class LaggedFrees {
 public:
  explicit LaggedFrees(const GpuLag& lag)
      : events_(lag.events), ns_(replay_detail::saturating_mul(lag.microseconds, replay_detail::kNsPerMicrosecond)) {}

  // `call`: the free's index among the trace's allocation/free calls; `time_ns`: its trace time.
  void add(const ReplayBlock& block, std::uint64_t call, std::uint64_t time_ns, bool async, std::uint64_t free_stream) {
    using namespace replay_detail;
    const bool on_stream = on_stream_list(async, free_stream);
    const StreamKey key{block.device, on_stream ? stream_of(free_stream) : 0, rounded(block.backend_size)};
    waiting_.push_back(Waiting{block, saturating_add(call, saturating_add(events_, 1)),
                               saturating_add(time_ns, ns_), on_stream, key});
    if (on_stream) by_stream_[key].push_back(std::prev(waiting_.end()));
    bytes_ += block.size;
  }

  // Hands each block the GPU has passed by call `call` at `time_ns` to `give_back`, oldest first.
  template <typename GiveBack>
  void release_due(std::uint64_t call, std::uint64_t time_ns, GiveBack&& give_back) {
    while (!waiting_.empty() && waiting_.front().ready_call <= call && waiting_.front().ready_ns <= time_ns) {
      auto it = waiting_.begin();
      if (it->on_stream) drop_from_stream(it->key);  // the stream list's oldest: both are in free order
      bytes_ -= it->block.size;
      ReplayBlock block = it->block;
      waiting_.erase(it);
      give_back(block);
    }
  }

  // A waiting block freed on `stream` that an async allocation of `size` there may take at once.
  bool take_on_stream(std::int32_t device, std::uint64_t stream, std::uint64_t size, ReplayBlock* out) {
    using namespace replay_detail;
    if (by_stream_.empty()) return false;
    auto list = by_stream_.find(StreamKey{device, stream_of(stream), rounded(size)});
    if (list == by_stream_.end()) return false;
    auto it = list->second.front();
    list->second.pop_front();
    if (list->second.empty()) by_stream_.erase(list);
    bytes_ -= it->block.size;
    *out = it->block;
    waiting_.erase(it);
    return true;
  }

  template <typename GiveBack>
  void release_all(GiveBack&& give_back) {
    release_due(~std::uint64_t{0}, ~std::uint64_t{0}, give_back);
  }

  std::uint64_t bytes() const { return bytes_; }

 private:
  struct StreamKey {
    std::int32_t device;
    std::uint64_t stream;
    std::uint64_t rounded_size;
    bool operator<(const StreamKey& o) const {
      return std::tie(device, stream, rounded_size) < std::tie(o.device, o.stream, o.rounded_size);
    }
  };
  struct Waiting {
    ReplayBlock block;
    std::uint64_t ready_call;  // reusable from this allocation/free call on
    std::uint64_t ready_ns;    // and from this trace time on
    bool on_stream;
    StreamKey key;
  };

  void drop_from_stream(const StreamKey& key) {
    auto list = by_stream_.find(key);
    list->second.pop_front();
    if (list->second.empty()) by_stream_.erase(list);
  }

  const std::uint64_t events_;
  const std::uint64_t ns_;
  std::list<Waiting> waiting_;
  std::map<StreamKey, std::deque<std::list<Waiting>::iterator>> by_stream_;
  std::uint64_t bytes_ = 0;
};

// gpushim's fenced free path: a cuMemFree joins its thread's open batch on the device; an async free on
// stream S joins S's list, where an async allocation on S takes it back at once. A batch closes at
// kBatchMaxBlocks blocks or kBatchMaxBytes bytes, a list at kBatchMaxBlocks blocks or kBatchMaxBytes
// bytes in more than one block (one larger block stays on its stream: stream_list_full); closing records
// its fence, which the GPU passes after the lag. Every kFreesPerIdleCheck frees of a thread, lists with
// no free for the default GPUSHIM_STREAM_LIST_IDLE are closed too, as the router's idle check ages them
// (router/router_state.h, StreamListAges). The device's fence queue is polled when one of its batches
// closes, and only then do blocks whose fence has passed go back. (Also in gpushim, not here: an
// allocation the backend cannot serve closes every batch and waits; host replay has no such miss.
// Batches of exited threads.)
class FenceBatches {
 public:
  explicit FenceBatches(const GpuLag& lag) : lag_(lag) {}

  template <typename GiveBack>
  void free(const ReplayBlock& block, std::uint64_t call, std::uint64_t time_ns, bool async, std::uint64_t free_stream,
            std::uint32_t thread, GiveBack&& give_back) {
    using namespace replay_detail;
    unsigned& until_idle_check = frees_until_idle_check_.try_emplace(thread, kFreesPerIdleCheck).first->second;
    if (--until_idle_check == 0) {
      until_idle_check = kFreesPerIdleCheck;
      close_idle_lists(call, time_ns, give_back);
    }
    bytes_ += block.size;
    const std::uint64_t size = rounded(block.backend_size);
    if (on_stream_list(async, free_stream)) {
      auto list = lists_.try_emplace(ListKey{block.device, stream_of(free_stream)}).first;
      list->second.by_size.emplace(size, block);
      list->second.bytes += size;
      list->second.last_free_age = age_;
      if (!stream_list_full(list->second.by_size.size(), list->second.bytes)) return;
      const std::vector<ReplayBlock> blocks = blocks_of(list->second);
      lists_.erase(list);
      close(block.device, blocks, call, time_ns, give_back);
      return;
    }
    auto batch = batches_.try_emplace(BatchKey{thread, block.device}).first;
    batch->second.blocks.push_back(block);
    batch->second.bytes += size;
    if (batch->second.blocks.size() < kBatchMaxBlocks && batch->second.bytes < kBatchMaxBytes) return;
    std::vector<ReplayBlock> blocks = std::move(batch->second.blocks);
    batches_.erase(batch);
    close(block.device, blocks, call, time_ns, give_back);
  }

  bool take_on_stream(std::int32_t device, std::uint64_t stream, std::uint64_t size, ReplayBlock* out) {
    using namespace replay_detail;
    if (lists_.empty()) return false;
    auto list = lists_.find(ListKey{device, stream_of(stream)});
    if (list == lists_.end()) return false;
    auto block = list->second.by_size.find(rounded(size));
    if (block == list->second.by_size.end()) return false;
    *out = block->second;
    list->second.bytes -= block->first;
    list->second.by_size.erase(block);
    if (list->second.by_size.empty()) lists_.erase(list);
    bytes_ -= out->size;
    return true;
  }

  template <typename GiveBack>
  void release_all(GiveBack&& give_back) {
    for (auto& [device, fenced] : fenced_) fenced.release_all(give_back);
    for (auto& [key, batch] : batches_)
      for (const ReplayBlock& b : batch.blocks) give_back(b);
    for (auto& [key, list] : lists_)
      for (const auto& [rounded_size, b] : list.by_size) give_back(b);
    fenced_.clear();
    batches_.clear();
    lists_.clear();
    bytes_ = 0;
  }

  std::uint64_t bytes() const { return bytes_; }

 private:
  using BatchKey = std::pair<std::uint32_t, std::int32_t>;  // thread, device
  using ListKey = std::pair<std::int32_t, std::uint64_t>;   // device, stream
  struct OpenBatch {
    std::vector<ReplayBlock> blocks;
    std::uint64_t bytes = 0;
  };
  struct OpenList {
    std::multimap<std::uint64_t, ReplayBlock> by_size;  // by rounded size
    std::uint64_t bytes = 0;
    std::uint64_t last_free_age = 0;
  };
  static std::vector<ReplayBlock> blocks_of(const OpenList& list) {
    std::vector<ReplayBlock> blocks;
    for (const auto& [rounded_size, b] : list.by_size) blocks.push_back(b);
    return blocks;
  }

  // close_idle_stream_lists (router/stream_free_lists.cpp) on the trace's clock: lists with no free in
  // the age that ends are closed behind a device fence.
  template <typename GiveBack>
  void close_idle_lists(std::uint64_t call, std::uint64_t time_ns, GiveBack& give_back) {
    if (time_ns - age_began_ns_ < kDefaultStreamListIdleNs) return;
    age_began_ns_ = time_ns;
    const std::uint64_t ended = age_++;
    for (auto list = lists_.begin(); list != lists_.end();) {
      if (list->second.last_free_age >= ended) {
        ++list;
        continue;
      }
      const std::vector<ReplayBlock> blocks = blocks_of(list->second);
      const std::int32_t device = list->first.first;
      list = lists_.erase(list);
      close(device, blocks, call, time_ns, give_back);
    }
  }

  template <typename GiveBack>
  void close(std::int32_t device, const std::vector<ReplayBlock>& blocks, std::uint64_t call, std::uint64_t time_ns,
             GiveBack& give_back) {
    LaggedFrees& fenced = fenced_.try_emplace(device, lag_).first->second;
    for (const ReplayBlock& b : blocks) fenced.add(b, call, time_ns, false, 0);
    fenced.release_due(call, time_ns, [&](const ReplayBlock& b) {
      bytes_ -= b.size;
      give_back(b);
    });
  }

  const GpuLag lag_;
  std::map<BatchKey, OpenBatch> batches_;
  std::map<ListKey, OpenList> lists_;
  std::map<std::int32_t, LaggedFrees> fenced_;  // each device's fence queue
  std::uint64_t bytes_ = 0;                     // in open batches, open lists and fence queues
  std::map<std::uint32_t, unsigned> frees_until_idle_check_;  // by trace thread
  std::uint64_t age_ = 0;
  std::uint64_t age_began_ns_ = 0;
};

// The model a GpuLag asks for, behind the calls the replay makes: before each allocation/free call, at
// each free, for each async allocation, and at the end.
class FreedBlocks {
 public:
  explicit FreedBlocks(const GpuLag& lag) : batched_(lag.batches), lagged_(lag), batches_(lag) {}

  template <typename GiveBack>
  void before_call(std::uint64_t call, std::uint64_t time_ns, GiveBack&& give_back) {
    if (!batched_) lagged_.release_due(call, time_ns, give_back);
  }

  template <typename GiveBack>
  void free(const ReplayBlock& block, std::uint64_t call, std::uint64_t time_ns, bool async, std::uint64_t free_stream,
            std::uint32_t thread, GiveBack&& give_back) {
    if (batched_) {
      batches_.free(block, call, time_ns, async, free_stream, thread, give_back);
      return;
    }
    lagged_.add(block, call, time_ns, async, free_stream);
    // Anything due by the next call is due now: without a lag the block goes back here, at its free,
    // so the backend sees the very calls, in the very order, of a replay without the model.
    lagged_.release_due(replay_detail::saturating_add(call, 1), time_ns, give_back);
  }

  bool take_on_stream(std::int32_t device, std::uint64_t stream, std::uint64_t size, ReplayBlock* out) {
    return batched_ ? batches_.take_on_stream(device, stream, size, out)
                    : lagged_.take_on_stream(device, stream, size, out);
  }

  template <typename GiveBack>
  void release_all(GiveBack&& give_back) {
    lagged_.release_all(give_back);
    batches_.release_all(give_back);
  }

  std::uint64_t bytes() const { return batched_ ? batches_.bytes() : lagged_.bytes(); }

 private:
  const bool batched_;
  LaggedFrees lagged_;
  FenceBatches batches_;
};

}  // namespace gpushim::tracing
