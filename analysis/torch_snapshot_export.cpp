#include "analysis/torch_snapshot_export.h"

#include <cstdlib>
#include <map>
#include <unordered_map>
#include <vector>

#include "analysis/pickle_writer.h"

namespace gpushim::tracing {
namespace {

// The frames of one event, less the leading ones inside gpushim (the same for every block).
std::vector<std::uint64_t> event_frames(const Trace& trace, std::uint32_t first, std::uint16_t count) {
  std::vector<std::uint64_t> frames;
  for (std::uint32_t i = first; i < first + count && i < trace.frames.size(); ++i) {
    const std::uint64_t address = trace.frames[i];
    if (frames.empty()) {
      const TraceModule* module = trace.module_of(address);
      if (module && module->path.find("libgpushim") != std::string::npos) continue;
    }
    frames.push_back(address);
  }
  return frames;
}

class SnapshotWriter {
 public:
  SnapshotWriter(const Trace& trace, Symbolizer& symbols) : trace_(trace), symbols_(symbols) {}

  // A list of frame dicts {'name', 'filename', 'line'}, innermost first as PyTorch stores them. Each
  // distinct frame is written once and then referenced.
  void frames(const std::vector<std::uint64_t>& addresses) {
    out.begin_list();
    for (std::uint64_t address : addresses) {
      auto known = memo_.find(address);
      if (known != memo_.end()) {
        out.recall(known->second);
        continue;
      }
      const FrameSymbol symbol = symbols_.lookup(address);
      std::string filename = symbol.module;
      long line = 0;
      if (!symbol.location.empty()) {
        const std::size_t colon = symbol.location.rfind(':');
        filename = symbol.location.substr(0, colon);
        if (colon != std::string::npos) line = std::strtol(symbol.location.c_str() + colon + 1, nullptr, 10);
      }
      out.begin_dict();
      out.string("name");
      out.string(symbol.function.empty() ? symbol.text() : symbol.function);
      out.string("filename");
      out.string(filename.empty() ? "??" : filename);
      out.string("line");
      out.integer(line);
      out.end_dict();
      memo_[address] = out.remember();
    }
    out.end_list();
  }

  void entry(const char* action, const TraceEvent& e, const std::vector<std::uint64_t>& stack,
             std::uint64_t device_free) {
    out.begin_dict();
    out.string("action");
    out.string(action);
    out.string("addr");
    out.unsigned_integer(e.address);
    out.string("size");
    out.unsigned_integer(e.size);
    out.string("stream");
    out.unsigned_integer(e.stream);
    out.string("time_us");
    out.unsigned_integer((trace_.header.start_realtime_ns + e.time_ns) / 1000);
    out.string("frames");
    frames(stack);
    if (std::string(action) == "oom") {
      out.string("device_free");
      out.unsigned_integer(device_free);
    }
    out.end_dict();
  }

  PickleWriter out;

 private:
  const Trace& trace_;
  Symbolizer& symbols_;
  std::unordered_map<std::uint64_t, std::uint32_t> memo_;
};

}  // namespace

std::string torch_snapshot(const Trace& trace, const TraceSummary& summary, Symbolizer& symbols) {
  std::vector<std::uint64_t> all_frames;
  int devices = 0;
  for (const TraceEvent& e : trace.events) {
    for (std::uint64_t f : event_frames(trace, e.first_frame, e.frame_count)) all_frames.push_back(f);
    if (e.device >= devices) devices = e.device + 1;
  }
  symbols.resolve(all_frames);
  std::map<int, std::uint64_t> largest_free;  // per device, from a dump
  for (const DeviceSnapshot& d : trace.device_states) largest_free[d.device] = d.largest_free;

  SnapshotWriter w(trace, symbols);
  PickleWriter& out = w.out;
  out.begin_dict();

  // segments: the state at the end (the failure, for a dump). gpushim's backends do not expose their
  // segments, so each live block is one segment holding exactly that block (PyTorch's view of a
  // cudaMalloc'ed block without caching): segment_plot then shows what is live, nothing of the free space.
  out.string("segments");
  out.begin_list();
  std::map<std::uint64_t, std::size_t> first_alloc_event;  // lifetime index -> event index
  {
    std::size_t lifetime = 0;
    for (std::size_t i = 0; i < trace.events.size(); ++i)
      if (is_alloc(trace.events[i].kind)) first_alloc_event[lifetime++] = i;
  }
  for (std::size_t i = 0; i < summary.lifetimes.size(); ++i) {
    const Lifetime& life = summary.lifetimes[i];
    if (life.freed) continue;
    const TraceEvent& e = trace.events[first_alloc_event[i]];
    out.begin_dict();
    out.string("device");
    out.integer(life.device);
    out.string("address");
    out.unsigned_integer(life.address);
    for (const char* key : {"total_size", "allocated_size", "active_size", "requested_size"}) {
      out.string(key);
      out.unsigned_integer(life.size);
    }
    out.string("stream");
    out.unsigned_integer(e.stream);
    out.string("segment_type");
    out.string("large");
    out.string("segment_pool_id");
    out.begin_tuple();
    out.integer(0);
    out.integer(0);
    out.end_tuple();
    out.string("is_expandable");
    out.boolean(false);
    out.string("frames");
    w.frames(event_frames(trace, e.first_frame, e.frame_count));
    out.string("blocks");
    out.begin_list();
    out.begin_dict();
    out.string("address");
    out.unsigned_integer(life.address);
    out.string("size");
    out.unsigned_integer(life.size);
    out.string("requested_size");
    out.unsigned_integer(life.size);
    out.string("state");
    out.string("active_allocated");
    out.string("frames");
    w.frames(event_frames(trace, e.first_frame, e.frame_count));
    out.end_dict();
    out.end_list();
    out.end_dict();
  }
  out.end_list();

  // device_traces: one list of actions per device, as PyTorch's allocator history records them.
  out.string("device_traces");
  out.begin_list();
  std::unordered_map<std::uint64_t, std::vector<std::uint64_t>> alloc_frames;  // block_key -> stack
  for (int d = 0; d < devices; ++d) {
    out.begin_list();
    for (const TraceEvent& e : trace.events) {
      if (e.device != d) continue;
      if (is_alloc(e.kind)) {
        std::vector<std::uint64_t> stack = event_frames(trace, e.first_frame, e.frame_count);
        w.entry("alloc", e, stack, 0);
        alloc_frames[block_key(e)] = std::move(stack);
      } else if (is_free(e.kind)) {
        // PyTorch splits a free in two (requested, then completed once the stream is done); gpushim's
        // fence is invisible in a trace, so both carry the free's time, and the allocation's stack.
        auto it = alloc_frames.find(block_key(e));
        static const std::vector<std::uint64_t> kNone;
        const std::vector<std::uint64_t>& stack = it == alloc_frames.end() ? kNone : it->second;
        w.entry("free_requested", e, stack, 0);
        w.entry("free_completed", e, stack, 0);
        if (it != alloc_frames.end()) alloc_frames.erase(it);
      } else if (e.kind == EventKind::out_of_memory) {
        w.entry("oom", e, event_frames(trace, e.first_frame, e.frame_count), largest_free[d]);
      }
    }
    out.end_list();
  }
  out.end_list();
  out.end_dict();
  return out.finish();
}

}  // namespace gpushim::tracing
