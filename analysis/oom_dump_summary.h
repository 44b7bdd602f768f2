// The part of `gpushim trace summary` that only an out-of-memory dump has (docs/oom-dump.md): the
// failing request, what each device held, and the top holders of memory at that moment, by call site
// when the dump has stacks, else by block.
#pragma once

#include <cstddef>
#include <ostream>

#include "analysis/trace_analysis.h"
#include "analysis/trace_reader.h"
#include "analysis/trace_symbolizer.h"

namespace gpushim::tracing {

// Writes nothing for a trace that is not a dump. Resolves the frames it names through `symbols`.
void write_oom_dump_summary(const Trace& trace, const TraceSummary& summary, Symbolizer& symbols,
                            std::size_t top, std::ostream& out);

}  // namespace gpushim::tracing
