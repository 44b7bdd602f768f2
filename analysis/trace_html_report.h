// `gpushim trace report`: one self-contained HTML page (no external files; the data and the script
// that draws it are inline), so it opens anywhere, attaches to a bug report, and renders in headless
// Chromium in tests. The plots are drawn by the page's script at the window's width, with ticks on
// both axes; the time axis starts zoomed to where memory moves and can be zoomed (drag, wheel) or
// reset (double-click); hovering a block or a site shows its stack.
#pragma once

#include <string>

#include "analysis/trace_analysis.h"
#include "analysis/trace_symbolizer.h"

namespace gpushim::tracing {

// Element ids, for tests that check the page renders: plot-overview (the whole run, with the window
// shown), plot-memory (live and reserved bytes in the window), plot-lifetimes (the largest blocks,
// alloc to free, packed into rows), plot-sizes (size histogram), table-sites (top allocation sites).
// The script marks <body data-rendered="1"> once everything is drawn. The address may carry
// "#window=START-END" (nanoseconds: the time axis opens there; zooming writes it) and "&block=N" (block
// N of the lifetime view is hovered, showing its size, times and stack in #tooltip).
std::string render_html_report(const Trace& trace, const TraceSummary& summary,
                               const Symbolizer& symbols, const std::string& title);

// The window of the run the report opens on: the shortest span holding kActiveShare of the
// allocations and frees, padded a little; the whole run when that span is most of it anyway.
struct TimeWindow {
  std::uint64_t start_ns = 0;
  std::uint64_t end_ns = 0;
};
TimeWindow where_memory_moves(const TraceSummary& summary);

}  // namespace gpushim::tracing
