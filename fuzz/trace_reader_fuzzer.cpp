// The trace reader itself (parse_trace on the bytes, read_trace on them as a file, raw or zstd), with
// the promises the tools build on checked on every trace it accepts.
#include <sstream>

#include "fuzz/fuzz_support.h"
#include "analysis/trace_reader.h"

using namespace gpushim;
using namespace gpushim::tracing;

namespace {

void check_accepted(const Trace& trace) {
  std::uint64_t allocated = 0;
  for (std::size_t i = 0; i < trace.events.size(); ++i) {
    const TraceEvent& e = trace.events[i];
    if (i && trace.events[i - 1].time_ns > e.time_ns) fuzz::finding("events out of time order", "");
    if (std::uint64_t(e.first_frame) + e.frame_count > trace.frames.size())
      fuzz::finding("an event's frames run past the frame table", "");
    if (e.device < format::kNoDevice || e.device > format::kMaxDeviceOrdinal)
      fuzz::finding("an impossible device number was accepted", std::to_string(e.device));
    if (is_alloc(e.kind)) {
      if (e.size > format::kMaxBlockBytes) fuzz::finding("an impossible size was accepted", std::to_string(e.size));
      allocated += e.size;
    }
  }
  if (allocated > format::kMaxTotalBytes) fuzz::finding("allocations add up past the limit", "");
  for (std::size_t i = 1; i < trace.modules.size(); ++i)
    if (trace.modules[i - 1].base > trace.modules[i].base) fuzz::finding("modules not sorted", "");
  if (trace.truncated && trace.truncated_at > trace.bytes) fuzz::finding("truncation past the end", "");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  static fuzz::InputFile file;
  Trace trace;
  TraceError error;
  if (parse_trace(data, size, &trace, &error)) {
    check_accepted(trace);
  } else if (error.offset > size) {
    fuzz::finding("error offset past the end of the input", error.message);
  }
  ReadLimits limits;
  limits.max_trace_bytes = 64u << 20;  // a zstd bomb must stop here, not at libFuzzer's memory limit
  if (read_trace(file.write(data, size), &trace, &error, {}, limits)) check_accepted(trace);
  else if (error.message.empty()) fuzz::finding("a refusal without a reason", "");
  return 0;
}
