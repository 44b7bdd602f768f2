// `gpushim trace report`: one self-contained HTML page (no scripts, no external files) with inline
// SVG plots, so it opens anywhere, attaches to a bug report, and renders in headless Chromium in tests.
#pragma once

#include <string>

#include "analysis/trace_analysis.h"
#include "analysis/trace_symbolizer.h"

namespace gpushim::tracing {

// Plot element ids, for tests that check the page renders: plot-memory (live and reserved bytes over
// time), plot-sizes (size histogram), plot-sites (top allocation sites), plot-timeline (largest
// allocations from alloc to free).
std::string render_html_report(const Trace& trace, const TraceSummary& summary,
                               const Symbolizer& symbols, const std::string& title);

}  // namespace gpushim::tracing
