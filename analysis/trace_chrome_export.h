// `gpushim trace export --format chrome`: the Chrome Trace Event format (JSON), which Perfetto and
// chrome://tracing open. Laid out so that Perfetto draws it as meant (its JSON importer requires the
// slices of one thread track to nest; overlapping slices that do not nest are misdrawn):
// - one process per device ("device 0 (pid 1234)");
// - in it, counter tracks "live bytes" and "reserved bytes" (reserved only when the trace has map events);
// - each allocation one complete slice from alloc to free, on a "blocks" lane track: lanes are filled
//   first-free, so slices on one lane never overlap (as many lanes as blocks were live at once);
//   the slice is named after its allocation site, its args hold size, address, thread, site and stack;
// - failed allocations, out-of-memory and cache releases as instants on the device's "events" track.
#pragma once

#include <ostream>

#include "analysis/trace_analysis.h"
#include "analysis/trace_symbolizer.h"

namespace gpushim::tracing {

void write_chrome_trace(const Trace& trace, const TraceSummary& summary, const Symbolizer& symbols,
                        std::ostream& out);

}  // namespace gpushim::tracing
