#include "analysis/trace_html_report.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

namespace gpushim::tracing {
namespace {

// Memory samples carried into the page: enough that zooming into a tenth of the run still shows
// every step of a typical training loop; each interval keeps its maximum, so peaks survive (downsample).
constexpr std::size_t kPageSamples = 30000;
// The blocks the lifetime view draws: the largest ones, which decide the peak.
constexpr std::size_t kLifetimeBlocks = 500;
// Sites listed in the table (and given their own colour, the first kSiteColours of them).
constexpr std::size_t kTopSites = 20;
// The share of allocations and frees the opening window holds, and how much wider than that it is.
constexpr double kActiveShare = 0.95;
constexpr double kWindowPadding = 0.03;
// Below this share of the run, zooming in is worth it; above, the whole run opens.
constexpr double kZoomWorthIt = 0.6;

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

// JSON inside <script>: "</" would end the element early.
std::string script_safe(std::string json) {
  for (std::size_t at = 0; (at = json.find("</", at)) != std::string::npos; at += 3) json.replace(at, 2, "<\\/");
  return json;
}

// Draws everything from the data block at the window's width; redraws on resize and zoom.
const char kScript[] = R"JS(
(function () {
  'use strict';
  const D = JSON.parse(document.getElementById('report-data').textContent);
  const LIVE = '#1f77b4', RESERVED = '#ff7f0e', OTHER = '#b0b0b0';
  const SITE_COLOURS = ['#4e79a7', '#e15759', '#59a14f', '#b07aa1', '#edc948', '#76b7b2', '#9c755f', '#ff9da7',
                        '#8cd17d', '#f28e2b'];
  const L = 78, R = 16, T = 10, B = 28;
  // The window to open on: "#window=START-END" (nanoseconds, as zooming writes it, so a zoomed view
  // can be linked), else where memory moves.
  let view = D.window.slice();
  const linked = /[#&]window=(\d+)-(\d+)/.exec(location.hash);
  if (linked && +linked[2] > +linked[1]) view = [+linked[1], Math.min(D.duration, +linked[2])];
  const tip = document.getElementById('tooltip');

  function esc(s) {
    return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  }
  function siteColour(i) { return i >= 0 && i < SITE_COLOURS.length ? SITE_COLOURS[i] : OTHER; }
  function niceStep(span, n) {
    const raw = span / Math.max(1, n), mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  }
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const step = niceStep(hi - lo, n), out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }
  const UNITS = [['GiB', 1073741824], ['MiB', 1048576], ['KiB', 1024], ['B', 1]];
  function byteUnit(max) { for (const u of UNITS) if (max >= u[1]) return u; return UNITS[3]; }
  function fmtBytes(v) {
    const u = byteUnit(v);
    return u[1] === 1 ? v + ' B' : (v / u[1]).toFixed(2) + ' ' + u[0];
  }
  function byteTicks(max, n) {
    const u = byteUnit(max), out = [];
    const step = niceStep(max / u[1], n);
    for (let v = 0; v <= max / u[1] + step * 1e-9; v += step) out.push([v * u[1], +v.toFixed(6) + ' ' + u[0]]);
    return out;
  }
  function fmtTime(ns, step) {
    step = step || ns || 1;
    const units = [[1e9, 's'], [1e6, 'ms'], [1e3, 'us'], [1, 'ns']];
    for (const [scale, name] of units) {
      if (step >= scale || scale === 1) {
        const digits = Math.max(0, Math.min(6, Math.ceil(-Math.log10(step / scale) + 1e-9)));
        return (ns / scale).toFixed(digits) + ' ' + name;
      }
    }
  }
  // A moment of the run, to the microsecond: "5572.414 ms".
  function fmtAt(ns) {
    return ns >= 1e6 ? (ns / 1e6).toFixed(3) + ' ms' : ns >= 1e3 ? (ns / 1e3).toFixed(1) + ' us' : ns + ' ns';
  }
  function width() { return Math.max(480, document.getElementById('plots').clientWidth); }

  // Time axis shared by the memory plot and the lifetime view.
  function xAxis(W, H, v0, v1) {
    const pw = W - L - R, step = niceStep(v1 - v0, Math.max(2, Math.floor(pw / 110)));
    let s = '';
    for (const t of ticks(v0, v1, Math.max(2, Math.floor(pw / 110)))) {
      const x = L + (t - v0) / (v1 - v0) * pw;
      s += `<line class="tick" x1="${x}" x2="${x}" y1="${T}" y2="${H - B + 4}" stroke="#e4e4e4"/>` +
           `<text class="xtick" x="${x}" y="${H - B + 17}" text-anchor="${x > W - 40 ? 'end' : 'middle'}">` +
           `${esc(fmtTime(t, step))}</text>`;
    }
    return s;
  }

  // Live and reserved bytes at each pixel column of [v0, v1]: the last level before it and the
  // highest level inside it, so no peak hides between two pixels.
  function stepLine(v0, v1, pw, key) {
    const S = D.samples, pts = [];
    let lo = 0, hi = S.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (S[mid][0] < v0) lo = mid + 1; else hi = mid; }
    let level = lo > 0 ? S[lo - 1][key] : 0;
    pts.push([0, level]);
    let column = -1, columnMax = 0;
    for (let i = lo; i < S.length && S[i][0] <= v1; ++i) {
      const c = Math.floor((S[i][0] - v0) / (v1 - v0) * pw);
      if (c !== column) {
        if (column >= 0) pts.push([column, columnMax], [column + 1, level]);
        column = c;
        columnMax = level;
      }
      level = S[i][key];
      columnMax = Math.max(columnMax, level);
    }
    if (column >= 0) pts.push([column, columnMax], [column + 1, level]);
    pts.push([pw, level]);
    return pts;
  }

  function memoryPlot(id, W, H, v0, v1, small) {
    const pw = W - L - R, ph = H - T - B;
    const ymax = Math.max(1, D.peak);
    const y = v => T + ph - v / ymax * ph;
    let s = `<svg id="${id}" width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">`;
    s += `<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="#fcfcfc" stroke="#ccc"/>`;
    for (const [v, label] of byteTicks(ymax, small ? 2 : Math.max(3, Math.floor(ph / 45)))) {
      s += `<line class="tick" x1="${L - 4}" x2="${L + pw}" y1="${y(v)}" y2="${y(v)}" stroke="#e4e4e4"/>` +
           `<text class="ytick" x="${L - 7}" y="${y(v) + 4}" text-anchor="end">${esc(label)}</text>`;
    }
    s += xAxis(W, H, v0, v1);
    const keys = D.reservedFromMaps ? [[2, RESERVED, 'reserved'], [1, LIVE, 'live']] : [[1, LIVE, 'live']];
    for (const [key, colour, name] of keys) {
      const pts = stepLine(v0, v1, pw, key);
      let d = '';
      for (let i = 0; i < pts.length; ++i)
        d += (i ? ' ' : '') + (L + pts[i][0]).toFixed(1) + ',' + y(pts[i][1]).toFixed(1) +
             (i + 1 < pts.length ? ' ' + (L + pts[i + 1][0]).toFixed(1) + ',' + y(pts[i][1]).toFixed(1) : '');
      s += `<polyline class="${name}" fill="none" stroke="${colour}" stroke-width="${small ? 1.5 : 2}" ` +
           `shape-rendering="crispEdges" points="${d}"/>`;
    }
    if (small) {
      const x0 = L + (view[0] - v0) / (v1 - v0) * pw, x1 = L + (view[1] - v0) / (v1 - v0) * pw;
      s += `<rect class="window" x="${x0}" y="${T}" width="${Math.max(2, x1 - x0)}" height="${ph}" ` +
           `fill="rgba(31,119,180,0.12)" stroke="#1f77b4"/>`;
    } else {
      s += `<text x="${L + 8}" y="${T + 16}" fill="${LIVE}" font-weight="bold">live</text>`;
      if (D.reservedFromMaps) s += `<text x="${L + 44}" y="${T + 16}" fill="${RESERVED}" font-weight="bold">reserved</text>`;
      else s += `<text x="${L + 44}" y="${T + 16}" fill="#777">(reserved = live: no map events)</text>`;
    }
    s += `<rect class="brush" x="0" y="${T}" width="0" height="${ph}" fill="rgba(0,0,0,0.1)"/>`;
    return s + '</svg>';
  }

  function lifetimePlot(W, v0, v1) {
    const lanes = D.lanes, row = lanes > 60 ? 4 : lanes > 30 ? 8 : 14;
    const H = T + B + Math.max(1, lanes) * row, pw = W - L - R;
    let s = `<svg id="plot-lifetimes" width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">`;
    s += `<rect x="${L}" y="${T}" width="${pw}" height="${H - T - B}" fill="#fcfcfc" stroke="#ccc"/>`;
    for (const r of ticks(0, lanes, Math.min(lanes, 6)))
      if (r < lanes) s += `<text class="ytick" x="${L - 7}" y="${T + r * row + Math.min(row, 12)}" text-anchor="end">row ${r + 1}</text>`;
    s += xAxis(W, H, v0, v1);
    D.blocks.forEach((b, i) => {
      const [start, end, size, site, freed, lane] = b;
      if (end < v0 || start > v1) return;
      const x0 = L + Math.max(0, (start - v0) / (v1 - v0)) * pw, x1 = L + Math.min(1, (end - v0) / (v1 - v0)) * pw;
      const w = Math.max(1, x1 - x0);
      s += `<rect class="span" data-block="${i}" x="${x0.toFixed(1)}" y="${T + lane * row + 1}" width="${w.toFixed(1)}" ` +
           `height="${Math.max(1, row - 2)}" fill="${siteColour(site)}" shape-rendering="crispEdges"` +
           (freed ? '' : ' stroke="#333" stroke-dasharray="2,2"') + '/>';
      if (w > 70 && row >= 12)
        s += `<text x="${x0 + 3}" y="${T + lane * row + row - 3}" font-size="10" fill="#fff" pointer-events="none">${esc(fmtBytes(size))}</text>`;
    });
    s += `<rect class="brush" x="0" y="${T}" width="0" height="${H - T - B}" fill="rgba(0,0,0,0.1)"/>`;
    return s + '</svg>';
  }

  function sizePlot(W) {
    const H = 200, pw = W - L - R, ph = H - T - B, n = D.sizes.length;
    const cmax = Math.max(1, ...D.sizes.map(b => b[1]));
    const y = v => T + ph - v / cmax * ph, bw = pw / Math.max(1, n);
    let s = `<svg id="plot-sizes" width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">`;
    s += `<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="#fcfcfc" stroke="#ccc"/>`;
    for (const v of ticks(0, cmax, 4))
      s += `<line class="tick" x1="${L - 4}" x2="${L + pw}" y1="${y(v)}" y2="${y(v)}" stroke="#e4e4e4"/>` +
           `<text class="ytick" x="${L - 7}" y="${y(v) + 4}" text-anchor="end">${v}</text>`;
    const every = Math.max(1, Math.ceil(n / Math.max(1, pw / 70)));
    D.sizes.forEach(([low, count], i) => {
      const x = L + i * bw;
      s += `<rect class="bar" x="${x + 1}" y="${y(count)}" width="${Math.max(1, bw - 2)}" height="${T + ph - y(count)}" ` +
           `fill="#59a14f"><title>${esc(fmtBytes(low))} to ${esc(fmtBytes(low * 2 - 1))}: ${count}</title></rect>`;
      if (i % every === 0)
        s += `<text class="xtick" x="${x + bw / 2}" y="${H - B + 17}" text-anchor="middle">${esc(fmtBytes(low))}</text>`;
    });
    return s + '</svg>';
  }

  function showTip(event, html) {
    tip.innerHTML = html;
    tip.style.display = 'block';
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = event.clientY + 14 + tip.offsetHeight > window.innerHeight ? event.clientY - tip.offsetHeight - 8 : event.clientY + 14;
    tip.style.left = Math.max(4, x) + 'px';
    tip.style.top = Math.max(4, y) + 'px';
  }
  function hideTip() { tip.style.display = 'none'; }
  function stackHtml(site) {
    const s = D.sites[site];
    if (!s) return '';
    return `<div class="site">${esc(s.label)}</div><pre>${esc(s.stack.join('\n') || '(no stack recorded)')}</pre>`;
  }

  function timeAt(svg, event) {
    const box = svg.getBoundingClientRect(), pw = box.width - L - R;
    const f = Math.min(1, Math.max(0, (event.clientX - box.left - L) / pw));
    return view[0] + f * (view[1] - view[0]);
  }
  function setView(v0, v1) {
    const minimum = Math.max(1000, D.duration * 1e-7);
    if (v1 - v0 < minimum) { const mid = (v0 + v1) / 2; v0 = mid - minimum / 2; v1 = mid + minimum / 2; }
    view = [Math.max(0, v0), Math.min(D.duration, v1)];
    try { history.replaceState(null, '', '#window=' + Math.round(view[0]) + '-' + Math.round(view[1])); } catch (e) {}
    render();
  }
  // Drag across a plot to zoom to that span, wheel to zoom around the pointer, double-click for the run.
  function zoomable(svg, full) {
    let from = null;
    const brush = svg.querySelector('.brush');
    const toTime = e => full ? (() => {
      const box = svg.getBoundingClientRect(), pw = box.width - L - R;
      return Math.min(1, Math.max(0, (e.clientX - box.left - L) / pw)) * D.duration;
    })() : timeAt(svg, e);
    svg.addEventListener('mousedown', e => { from = [e.clientX, toTime(e)]; e.preventDefault(); });
    svg.addEventListener('mousemove', e => {
      if (from === null) return;
      const box = svg.getBoundingClientRect(), a = Math.min(from[0], e.clientX), b = Math.max(from[0], e.clientX);
      brush.setAttribute('x', a - box.left);
      brush.setAttribute('width', b - a);
    });
    window.addEventListener('mouseup', e => {
      if (from === null) return;
      const to = toTime(e), moved = Math.abs(e.clientX - from[0]) > 3;
      const start = from[1];
      from = null;
      if (moved) setView(Math.min(start, to), Math.max(start, to));
      else if (full) { const half = (view[1] - view[0]) / 2; setView(to - half, to + half); }
    }, { once: false });
    svg.addEventListener('dblclick', () => setView(0, D.duration));
    if (!full) svg.addEventListener('wheel', e => {
      e.preventDefault();
      const t = timeAt(svg, e), k = e.deltaY > 0 ? 1.25 : 0.8;
      setView(t - (t - view[0]) * k, t + (view[1] - t) * k);
    }, { passive: false });
  }

  function render() {
    const W = width();
    document.getElementById('overview').innerHTML = memoryPlot('plot-overview', W, 90, 0, D.duration, true);
    document.getElementById('memory').innerHTML = memoryPlot('plot-memory', W, 300, view[0], view[1], false);
    document.getElementById('lifetimes').innerHTML = lifetimePlot(W, view[0], view[1]);
    document.getElementById('sizes').innerHTML = sizePlot(W);
    document.getElementById('window-text').textContent =
      `showing ${fmtTime(view[0], (view[1] - view[0]) / 10)} to ${fmtTime(view[1], (view[1] - view[0]) / 10)} ` +
      `of ${fmtTime(D.duration, D.duration / 100)}`;
    zoomable(document.getElementById('plot-overview'), true);
    zoomable(document.getElementById('plot-memory'), false);
    zoomable(document.getElementById('plot-lifetimes'), false);
    const memory = document.getElementById('plot-memory');
    memory.addEventListener('mousemove', e => {
      const t = timeAt(memory, e), S = D.samples;
      let lo = 0, hi = S.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (S[mid][0] <= t) lo = mid + 1; else hi = mid; }
      const s = lo > 0 ? S[lo - 1] : [0, 0, 0];
      showTip(e, `<b>${esc(fmtAt(t))}</b><br>live ${esc(fmtBytes(s[1]))}` +
                 (D.reservedFromMaps ? `<br>reserved ${esc(fmtBytes(s[2]))}` : ''));
    });
    memory.addEventListener('mouseleave', hideTip);
    const lifetimes = document.getElementById('plot-lifetimes');
    lifetimes.addEventListener('mousemove', e => {
      const i = e.target.getAttribute && e.target.getAttribute('data-block');
      if (i === null || i === undefined) return hideTip();
      const [start, end, size, site, freed, lane, thread] = D.blocks[+i];
      showTip(e, `<b>${esc(fmtBytes(size))}</b>, thread ${thread}<br>allocated at ${esc(fmtAt(start))}, ` +
                 (freed ? `freed at ${esc(fmtAt(end))} (lived ${esc(fmtTime(end - start))})`
                        : 'never freed') + stackHtml(site));
    });
    lifetimes.addEventListener('mouseleave', hideTip);
  }

  document.querySelectorAll('#table-sites tbody tr').forEach(tr => {
    const site = +tr.getAttribute('data-site');
    tr.querySelector('.swatch').style.background = siteColour(site);
    tr.addEventListener('mousemove', e => showTip(e, stackHtml(site)));
    tr.addEventListener('mouseleave', hideTip);
  });
  document.getElementById('zoom-active').addEventListener('click', () => setView(D.window[0], D.window[1]));
  document.getElementById('zoom-all').addEventListener('click', () => setView(0, D.duration));
  window.addEventListener('resize', render);
  render();
  // "#block=N" in the address points at block N of the lifetime view: it is scrolled to and hovered,
  // through the same handler as the mouse, so a link can show a block's size, times and stack.
  const pointed = /[#&]block=(\d+)/.exec(location.hash);
  const bar = pointed && document.querySelector(`#plot-lifetimes rect[data-block="${pointed[1]}"]`);
  if (bar) {
    bar.scrollIntoView({ block: 'nearest' });
    const box = bar.getBoundingClientRect();
    bar.dispatchEvent(new MouseEvent('mousemove', { bubbles: true, clientX: box.left + box.width / 2,
                                                    clientY: box.top + box.height / 2 }));
  }
  document.body.setAttribute('data-rendered', '1');
})();
)JS";

const char kStyle[] =
    "body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.1em;margin:1.6em 0 .3em}"
    "#plots svg{display:block;user-select:none}svg text{font-size:11px;fill:#333}"
    "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}"
    "td:first-child,th:first-child{text-align:left}#table-sites{width:100%}#table-sites td.name{text-align:left;"
    "font-family:monospace;font-size:12px;word-break:break-all}#table-sites tr:hover{background:#f3f6fa}"
    ".swatch{display:inline-block;width:12px;height:12px;border-radius:2px}"
    ".peakbar{display:inline-block;height:9px;background:#9aa9c0;margin-right:6px;vertical-align:middle}"
    "#tooltip{position:fixed;display:none;background:#fff;border:1px solid #999;padding:6px 8px;"
    "box-shadow:0 2px 8px rgba(0,0,0,.2);font-size:12px;max-width:640px;pointer-events:none;z-index:9}"
    "#tooltip pre{margin:4px 0 0;font-size:11px;white-space:pre-wrap}#tooltip .site{margin-top:4px;font-weight:bold}"
    ".hint{color:#666;font-size:.9em}button{margin-right:6px}";

}  // namespace

TimeWindow where_memory_moves(const TraceSummary& s) {
  TimeWindow whole{0, std::max<std::uint64_t>(1, s.duration_ns)};
  std::vector<std::uint64_t> times;
  times.reserve(s.lifetimes.size() * 2);
  for (const Lifetime& l : s.lifetimes) {
    times.push_back(l.start_ns);
    if (l.freed) times.push_back(l.end_ns);
  }
  if (times.size() < 2) return whole;
  std::sort(times.begin(), times.end());
  const std::size_t keep = std::max<std::size_t>(1, std::size_t(double(times.size()) * kActiveShare));
  std::size_t best = 0;
  for (std::size_t i = 0; i + keep <= times.size(); ++i)
    if (times[i + keep - 1] - times[i] < times[best + keep - 1] - times[best]) best = i;
  const std::uint64_t span = times[best + keep - 1] - times[best];
  if (double(span) > kZoomWorthIt * double(whole.end_ns)) return whole;
  const std::uint64_t pad = std::max<std::uint64_t>(1000, std::uint64_t(double(span) * kWindowPadding));
  return {times[best] > pad ? times[best] - pad : 0, std::min(whole.end_ns, times[best + keep - 1] + pad)};
}

std::string render_html_report(const Trace& trace, const TraceSummary& s, const Symbolizer& symbols,
                               const std::string& title) {
  using nlohmann::json;
  const TimeWindow window = where_memory_moves(s);

  // The largest blocks, in order of allocation, packed into rows.
  std::vector<const Lifetime*> blocks;
  for (const Lifetime& l : s.lifetimes) blocks.push_back(&l);
  const std::size_t shown = std::min(kLifetimeBlocks, blocks.size());
  std::partial_sort(blocks.begin(), blocks.begin() + std::ptrdiff_t(shown), blocks.end(),
                    [](const Lifetime* a, const Lifetime* b) { return a->size > b->size; });
  blocks.resize(shown);
  std::sort(blocks.begin(), blocks.end(), [](const Lifetime* a, const Lifetime* b) {
    return a->start_ns != b->start_ns ? a->start_ns < b->start_ns : a < b;
  });
  const std::vector<int> lanes = assign_lanes(blocks);

  // Sites: the top ones in order, then those of the drawn blocks; page index by site index.
  std::map<std::uint32_t, int> page_site;
  std::vector<std::uint32_t> listed;
  auto add_site = [&](std::uint32_t site) {
    if (site < s.sites.size() && page_site.emplace(site, int(listed.size())).second) listed.push_back(site);
  };
  for (std::uint32_t i = 0; i < std::min<std::size_t>(kTopSites, s.sites.size()); ++i) add_site(i);
  for (const Lifetime* l : blocks) add_site(l->site);
  const std::size_t named = listed.empty() ? 0 : *std::max_element(listed.begin(), listed.end()) + 1;
  const std::vector<std::string> names = site_names(s.sites, named, symbols);
  const std::vector<std::string> labels = site_labels(s.sites, named, symbols);

  json data;
  data["duration"] = std::max<std::uint64_t>(1, s.duration_ns);
  data["peak"] = std::max(s.peak_live, s.peak_reserved);
  data["reservedFromMaps"] = s.reserved_from_maps;
  data["window"] = {window.start_ns, window.end_ns};
  json samples = json::array();
  for (const MemorySample& m : downsample(s.samples, kPageSamples)) samples.push_back({m.time_ns, m.live, m.reserved});
  data["samples"] = std::move(samples);
  json sites = json::array();
  for (std::uint32_t site : listed) {
    json stack = json::array();
    for (std::uint64_t f : s.sites[site].frames) stack.push_back(symbols.lookup(f).text());
    sites.push_back({{"label", labels[site]}, {"stack", stack}});
  }
  data["sites"] = std::move(sites);
  json page_blocks = json::array();
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const Lifetime& l = *blocks[i];
    page_blocks.push_back({l.start_ns, l.end_ns, l.size, page_site.count(l.site) ? page_site[l.site] : -1, l.freed,
                           lanes[i], l.thread_id});
  }
  data["blocks"] = std::move(page_blocks);
  data["lanes"] = lanes.empty() ? 0 : *std::max_element(lanes.begin(), lanes.end()) + 1;
  json sizes = json::array();
  int lo = 63, hi = 0;
  for (int i = 0; i < 64; ++i)
    if (s.size_histogram[i]) lo = std::min(lo, i), hi = std::max(hi, i);
  for (int i = lo; i <= hi; ++i) sizes.push_back({std::uint64_t(1) << i, s.size_histogram[i]});
  data["sizes"] = std::move(sizes);

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    << "<meta name=\"viewport\" content=\"width=device-width\"><title>gpushim trace: " << escape(title)
    << "</title>\n<style>" << kStyle << "</style></head><body>\n<h1>gpushim trace: " << escape(title)
    << "</h1>\n<noscript><p>This report draws its plots with JavaScript; the tables below need none.</p></noscript>\n"
    << "<table id=\"totals\">\n";
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
  h << "</table>\n<div id=\"plots\">\n<h2>Live and reserved bytes</h2>\n"
    << "<p class=\"hint\"><button id=\"zoom-active\">Where memory moves</button><button id=\"zoom-all\">Whole run"
    << "</button><span id=\"window-text\"></span>. Drag across a plot to zoom, scroll to zoom around the pointer, "
    << "double-click for the whole run; the strip shows the whole run and the window.</p>\n"
    << "<div id=\"overview\"></div><div id=\"memory\"></div>\n"
    << "<h2>When the " << blocks.size() << " largest blocks lived</h2>\n"
    << "<p class=\"hint\">Each bar is one block from its allocation to its free (dashed: never freed), coloured "
    << "by its allocation site as in the table below, packed into rows so that none overlap. Hover for its "
    << "size, times and stack.</p>\n<div id=\"lifetimes\"></div>\n"
    << "<h2>Allocation sizes</h2>\n<div id=\"sizes\"></div>\n</div>\n"
    << "<h2>Top allocation sites by peak live bytes</h2>\n<p class=\"hint\">Hover a row for its whole stack.</p>\n"
    << "<table id=\"table-sites\"><thead><tr><th></th><th style=\"text-align:left\">site</th><th>peak live</th><th>allocated in all</th>"
    << "<th>allocations</th></tr></thead><tbody>\n";
  std::uint64_t top_peak = 1;
  for (std::size_t i = 0; i < std::min(kTopSites, s.sites.size()); ++i) top_peak = std::max(top_peak, s.sites[i].peak_live);
  for (std::size_t i = 0; i < std::min(kTopSites, s.sites.size()); ++i) {
    const AllocationSite& site = s.sites[i];
    const int bar = int(120.0 * double(site.peak_live) / double(top_peak));
    h << "<tr data-site=\"" << page_site[std::uint32_t(i)] << "\"><td><span class=\"swatch\"></span></td><td class=\"name\">"
      << escape(names[i]) << "</td><td><span class=\"peakbar\" style=\"width:" << bar << "px\"></span>"
      << escape(format_size(site.peak_live)) << "</td><td>" << escape(format_size(site.bytes)) << "</td><td>"
      << site.count << "</td></tr>\n";
  }
  h << "</tbody></table>\n<div id=\"tooltip\"></div>\n<script type=\"application/json\" id=\"report-data\">"
    << script_safe(data.dump()) << "</script>\n<script>" << kScript << "</script>\n</body></html>\n";
  return h.str();
}

}  // namespace gpushim::tracing
