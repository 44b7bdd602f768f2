// `gpushim trace export --format torch-snapshot`: a trace or an out-of-memory dump as the memory
// snapshot PyTorch's memory_viz reads (torch.cuda.memory._snapshot(): a pickled dict with 'segments'
// and 'device_traces'), so `python -m torch.cuda._memory_viz trace_plot|segment_plot|memory` and
// pytorch.org/memory_viz show gpushim's blocks with their call stacks. The mapping is documented in
// docs/oom-dump.md.
#pragma once

#include <string>

#include "analysis/trace_analysis.h"
#include "analysis/trace_reader.h"
#include "analysis/trace_symbolizer.h"

namespace gpushim::tracing {

// The pickle bytes. Resolves every recorded frame through `symbols`.
std::string torch_snapshot(const Trace& trace, const TraceSummary& summary, Symbolizer& symbols);

}  // namespace gpushim::tracing
