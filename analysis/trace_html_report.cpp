#include "analysis/trace_html_report.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace gpushim::tracing {
namespace {

// Plots are drawn in a fixed coordinate box and scaled by the browser (viewBox).
constexpr double kWidth = 900, kHeight = 260, kLeft = 70, kBottom = 30, kTop = 10;
constexpr std::size_t kPlotPoints = 1500;      // samples per line: more than a screen's pixels
constexpr std::size_t kTopSites = 15;
constexpr std::size_t kTimelineAllocations = 40;

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

void svg_open(std::ostringstream& h, const char* id, const char* label, double height = kHeight) {
  h << "<svg id=\"" << id << "\" role=\"img\" aria-label=\"" << label << "\" viewBox=\"0 0 " << kWidth
    << ' ' << height << "\" width=\"" << kWidth << "\" height=\"" << height
    << "\" xmlns=\"http://www.w3.org/2000/svg\">\n";
}

void memory_plot(std::ostringstream& h, const TraceSummary& s) {
  svg_open(h, "plot-memory", "live and reserved bytes over time");
  std::vector<MemorySample> pts = downsample(s.samples, kPlotPoints);
  double tmax = std::max<double>(1, double(s.duration_ns));
  double ymax = std::max<double>(1, double(std::max(s.peak_live, s.peak_reserved)));
  double pw = kWidth - kLeft - 10, ph = kHeight - kBottom - kTop;
  auto x = [&](std::uint64_t t) { return kLeft + pw * double(t) / tmax; };
  auto y = [&](std::uint64_t v) { return kTop + ph - ph * double(v) / ymax; };
  h << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"#fafafa\" stroke=\"#ccc\"/>\n";
  for (int pass = 0; pass < 2; ++pass) {
    h << "<polyline class=\"" << (pass ? "live" : "reserved") << "\" fill=\"none\" stroke=\""
      << (pass ? "#1f77b4" : "#ff7f0e") << "\" stroke-width=\"1.5\" points=\"";
    std::uint64_t prev = 0;
    for (const MemorySample& m : pts) {
      std::uint64_t v = pass ? m.live : m.reserved;
      h << num(x(m.time_ns)) << ',' << num(y(prev)) << ' ' << num(x(m.time_ns)) << ',' << num(y(v)) << ' ';
      prev = v;
    }
    h << num(x(s.duration_ns)) << ',' << num(y(prev)) << "\"/>\n";
  }
  h << "<text x=\"4\" y=\"" << kTop + 10 << "\" font-size=\"11\">" << escape(format_size(std::uint64_t(ymax)))
    << "</text><text x=\"4\" y=\"" << kTop + ph << "\" font-size=\"11\">0</text>\n";
  h << "<text x=\"" << kLeft << "\" y=\"" << kHeight - 8 << "\" font-size=\"11\">0</text><text x=\""
    << kWidth - 80 << "\" y=\"" << kHeight - 8 << "\" font-size=\"11\">" << escape(format_duration(s.duration_ns))
    << "</text>\n";
  h << "<text x=\"" << kLeft + 10 << "\" y=\"" << kTop + 14
    << "\" font-size=\"12\" fill=\"#1f77b4\">live</text><text x=\"" << kLeft + 50 << "\" y=\"" << kTop + 14
    << "\" font-size=\"12\" fill=\"#ff7f0e\">reserved" << (s.reserved_from_maps ? "" : " (= live: no map events)")
    << "</text>\n</svg>\n";
}

void size_plot(std::ostringstream& h, const TraceSummary& s) {
  svg_open(h, "plot-sizes", "allocation size histogram");
  int lo = 63, hi = 0;
  for (int i = 0; i < 64; ++i)
    if (s.size_histogram[i]) lo = std::min(lo, i), hi = std::max(hi, i);
  if (lo > hi) lo = hi = 0;
  std::uint64_t cmax = 1;
  for (int i = lo; i <= hi; ++i) cmax = std::max(cmax, s.size_histogram[i]);
  double pw = kWidth - kLeft - 10, ph = kHeight - kBottom - kTop;
  double bw = pw / (hi - lo + 1);
  for (int i = lo; i <= hi; ++i) {
    double bh = ph * double(s.size_histogram[i]) / double(cmax);
    double x = kLeft + bw * (i - lo);
    h << "<rect class=\"bar\" x=\"" << num(x + 1) << "\" y=\"" << num(kTop + ph - bh) << "\" width=\""
      << num(std::max(1.0, bw - 2)) << "\" height=\"" << num(bh) << "\" fill=\"#2ca02c\"><title>"
      << escape(format_size(1ull << i)) << ": " << s.size_histogram[i] << "</title></rect>\n";
    if ((i - lo) % std::max(1, (hi - lo + 1) / 10) == 0)
      h << "<text x=\"" << num(x) << "\" y=\"" << kHeight - 8 << "\" font-size=\"10\">"
        << escape(format_size(1ull << i)) << "</text>\n";
  }
  h << "<text x=\"4\" y=\"" << kTop + 10 << "\" font-size=\"11\">" << cmax << "</text>\n</svg>\n";
}

void sites_plot(std::ostringstream& h, const TraceSummary& s, const Symbolizer& symbols) {
  std::size_t n = std::min(kTopSites, s.sites.size());
  double row = 20, height = std::max(40.0, row * double(n) + 20);
  svg_open(h, "plot-sites", "top allocation sites by peak live bytes", height);
  std::uint64_t vmax = 1;
  for (std::size_t i = 0; i < n; ++i) vmax = std::max(vmax, s.sites[i].peak_live);
  double left = 420, pw = kWidth - left - 90;
  for (std::size_t i = 0; i < n; ++i) {
    const AllocationSite& site = s.sites[i];
    std::string name =
        site.frames.empty() ? "(no stack recorded)" : symbols.lookup(site.frames[site.label_frame]).text();
    if (name.size() > 56) name = name.substr(0, 53) + "...";
    if (!site.frames.empty() && (site.label_frame > 0 || site.all_plumbing))
      name += site.all_plumbing ? " [all plumbing]" : " [+" + std::to_string(site.label_frame) + "]";
    // Hovering a bar shows the label in full and the whole stack.
    std::string stack = site_label(site, symbols);
    for (std::uint64_t f : site.frames) stack += "\n  " + symbols.lookup(f).text();
    double y = 10 + row * double(i), w = pw * double(site.peak_live) / double(vmax);
    h << "<g><title>" << escape(stack) << "</title><text x=\"4\" y=\"" << num(y + 13) << "\" font-size=\"11\">"
      << escape(name) << "</text>"
      << "<rect class=\"bar\" x=\"" << left << "\" y=\"" << num(y + 2) << "\" width=\"" << num(std::max(1.0, w))
      << "\" height=\"" << row - 4 << "\" fill=\"#9467bd\"/><text x=\"" << num(left + w + 4) << "\" y=\""
      << num(y + 13) << "\" font-size=\"11\">" << escape(format_size(site.peak_live)) << "</text></g>\n";
  }
  h << "</svg>\n";
}

void timeline_plot(std::ostringstream& h, const TraceSummary& s) {
  std::vector<const Lifetime*> largest;
  for (const Lifetime& l : s.lifetimes) largest.push_back(&l);
  std::size_t n = std::min(kTimelineAllocations, largest.size());
  std::partial_sort(largest.begin(), largest.begin() + n, largest.end(),
                    [](const Lifetime* a, const Lifetime* b) { return a->size > b->size; });
  largest.resize(n);
  std::sort(largest.begin(), largest.end(),
            [](const Lifetime* a, const Lifetime* b) { return a->start_ns < b->start_ns; });
  double row = 12, height = std::max(40.0, row * double(n) + 30);
  svg_open(h, "plot-timeline", "largest allocations from alloc to free", height);
  double tmax = std::max<double>(1, double(s.duration_ns)), pw = kWidth - kLeft - 10;
  for (std::size_t i = 0; i < n; ++i) {
    const Lifetime& l = *largest[i];
    double x0 = kLeft + pw * double(l.start_ns) / tmax, x1 = kLeft + pw * double(l.end_ns) / tmax;
    h << "<rect class=\"span\" x=\"" << num(x0) << "\" y=\"" << num(5 + row * double(i)) << "\" width=\""
      << num(std::max(1.0, x1 - x0)) << "\" height=\"" << row - 2 << "\" fill=\""
      << (l.freed ? "#d62728" : "#8c564b") << "\"><title>" << escape(format_size(l.size)) << " at "
      << escape(format_duration(l.start_ns)) << (l.freed ? "" : ", never freed") << "</title></rect>"
      << "<text x=\"4\" y=\"" << num(14 + row * double(i)) << "\" font-size=\"9\">"
      << escape(format_size(l.size)) << "</text>\n";
  }
  h << "</svg>\n";
}

}  // namespace

std::string render_html_report(const Trace& trace, const TraceSummary& s, const Symbolizer& symbols,
                               const std::string& title) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gpushim trace: "
    << escape(title) << "</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:960px}"
    << "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}"
    << "td:first-child,th:first-child{text-align:left}svg{display:block;margin:0.5em 0 1.5em}</style>"
    << "</head><body>\n<h1>gpushim trace: " << escape(title) << "</h1>\n<table id=\"totals\">\n";
  auto row = [&](const std::string& k, const std::string& v) {
    h << "<tr><td>" << escape(k) << "</td><td>" << escape(v) << "</td></tr>\n";
  };
  row("process", std::to_string(trace.header.pid) +
                     (trace.header.rank >= 0 ? ", rank " + std::to_string(trace.header.rank) : ""));
  row("duration", format_duration(s.duration_ns));
  row("events", std::to_string(s.events) + (trace.clean_end ? "" : " (recording was cut short)"));
  row("allocations", std::to_string(s.count_by_kind[1] + s.count_by_kind[3]) + ", " +
                         format_size(s.bytes_allocated));
  row("peak live", format_size(s.peak_live) + " at " + format_duration(s.peak_live_time_ns));
  row("peak reserved", format_size(s.peak_reserved) + " at " + format_duration(s.peak_reserved_time_ns));
  row("failed allocations / out of memory",
      std::to_string(s.count_by_kind[5]) + " / " + std::to_string(s.count_by_kind[7]));
  row("median lifetime", format_duration(s.median_lifetime_ns));
  h << "</table>\n<h2>Live and reserved bytes over time</h2>\n";
  memory_plot(h, s);
  h << "<h2>Allocation sizes</h2>\n";
  size_plot(h, s);
  h << "<h2>Top allocation sites by peak live bytes</h2>\n";
  sites_plot(h, s, symbols);
  h << "<h2>Largest allocations, alloc to free</h2>\n";
  timeline_plot(h, s);
  h << "</body></html>\n";
  return h.str();
}

}  // namespace gpushim::tracing
