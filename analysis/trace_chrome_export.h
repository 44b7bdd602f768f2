// `gpushim trace export --format chrome`: the Chrome Trace Event format (JSON), which Perfetto and
// chrome://tracing open. Counter track "memory" (live and reserved bytes), one complete ("X") event per
// allocation from alloc to free on its thread, instant events for failed allocations and OOM.
#pragma once

#include <ostream>

#include "analysis/trace_analysis.h"

namespace gpushim::tracing {

void write_chrome_trace(const Trace& trace, const TraceSummary& summary, std::ostream& out);

}  // namespace gpushim::tracing
