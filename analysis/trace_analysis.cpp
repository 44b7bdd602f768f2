#include "analysis/trace_analysis.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <queue>
#include <set>
#include <unordered_map>

#include "diagnostics/log.h"
#include "analysis/trace_symbolizer.h"

namespace gpushim::tracing {

const char* const kLifetimeBucketNames[10] = {"< 1 us",  "< 10 us", "< 100 us", "< 1 ms", "< 10 ms",
                                              "< 100 ms", "< 1 s",  "< 10 s",   ">= 10 s", "never freed"};

const char* const kAllocatorPlumbingModules[5] = {"libgpushim", "libcudart", "libcuda.", "libc10_cuda",
                                                  "libc10."};

bool is_allocator_plumbing(const std::string& module_path) {
  std::size_t slash = module_path.rfind('/');
  const char* name = module_path.c_str() + (slash == std::string::npos ? 0 : slash + 1);
  for (const char* prefix : kAllocatorPlumbingModules)
    if (std::strncmp(name, prefix, std::strlen(prefix)) == 0) return true;
  return false;
}

std::string site_label(const AllocationSite& site, const Symbolizer& symbols) {
  if (site.frames.empty()) return "(no stack recorded)";
  std::string label = symbols.lookup(site.frames[site.label_frame]).text();
  std::string n = std::to_string(site.all_plumbing ? site.frames.size() : site.label_frame);
  if (site.all_plumbing) return label + "  [all " + n + " recorded frames are allocator plumbing]";
  if (site.label_frame == 0) return label;
  return label + "  [" + n + (site.label_frame == 1 ? " allocator frame" : " allocator frames") + " skipped]";
}

std::vector<std::string> site_names(const std::vector<AllocationSite>& sites, std::size_t count,
                                    const Symbolizer& symbols) {
  count = std::min(count, sites.size());
  std::vector<std::string> names(count);
  std::map<std::string, std::vector<std::size_t>> same_name;
  for (std::size_t i = 0; i < count; ++i) {
    const AllocationSite& site = sites[i];
    names[i] = site.frames.empty() ? "(no stack recorded)" : symbols.lookup(site.frames[site.label_frame]).text();
    same_name[names[i]].push_back(i);
  }
  for (const auto& [name, group] : same_name) {
    if (group.size() < 2) continue;
    for (std::size_t i : group) {
      const std::vector<std::uint64_t>& mine = sites[i].frames;
      // Walk out from the label frame until no other site of the group shares the stack so far.
      std::vector<std::size_t> sharing;
      for (std::size_t j : group)
        if (j != i) sharing.push_back(j);
      std::size_t k = sites[i].label_frame;
      for (; k < mine.size() && !sharing.empty(); ++k) {
        std::vector<std::size_t> still;
        for (std::size_t j : sharing) {
          const std::vector<std::uint64_t>& theirs = sites[j].frames;
          const std::size_t at = k - sites[i].label_frame + sites[j].label_frame;
          if (at < theirs.size() && theirs[at] == mine[k]) still.push_back(j);
        }
        sharing.swap(still);
        if (sharing.empty()) break;
      }
      if (sharing.empty() && k < mine.size() && k > sites[i].label_frame) {
        names[i] += " via " + symbols.lookup(mine[k]).text();
      } else if (sharing.empty() && k < mine.size()) {  // one function, called from two places in it
        FrameSymbol address_only = symbols.lookup(mine[k]);
        address_only.function.clear();
        names[i] += " at " + address_only.text();
      } else
        names[i] += " (stack " + std::to_string(i + 1) + ")";
    }
  }
  return names;
}

std::vector<std::string> site_labels(const std::vector<AllocationSite>& sites, std::size_t count,
                                     const Symbolizer& symbols) {
  std::vector<std::string> labels = site_names(sites, count, symbols);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const AllocationSite& site = sites[i];
    if (site.frames.empty()) continue;
    const std::size_t n = site.all_plumbing ? site.frames.size() : site.label_frame;
    if (site.all_plumbing)
      labels[i] += "  [all " + std::to_string(n) + " recorded frames are allocator plumbing]";
    else if (n > 0)
      labels[i] += "  [" + std::to_string(n) + (n == 1 ? " allocator frame" : " allocator frames") + " skipped]";
  }
  return labels;
}

namespace {

int size_bucket(std::uint64_t size) {
  int b = 0;
  while (size > 1) {
    size >>= 1;
    ++b;
  }
  return b;
}

int lifetime_bucket(std::uint64_t ns) {
  std::uint64_t limit = 1000;
  for (int b = 0; b < 8; ++b, limit *= 10)
    if (ns < limit) return b;
  return 8;
}

// The part of a stack that belongs to the program: frames inside gpushim itself (the router and the
// recorder) say nothing about where the program allocates.
std::vector<std::uint64_t> site_frames(const Trace& trace, const TraceEvent& e) {
  std::vector<std::uint64_t> out;
  for (std::uint32_t i = 0; i < e.frame_count; ++i) {
    std::uint64_t f = trace.frames[e.first_frame + i];
    const TraceModule* m = trace.module_of(f);
    if (out.empty() && m && m->path.find("libgpushim") != std::string::npos) continue;
    out.push_back(f);
  }
  return out;
}

// Sets AllocationSite::label_frame. A frame whose module is unknown is not plumbing: it may well be
// the program (a JIT, a module unloaded before the map was written).
void choose_label_frame(const Trace& trace, AllocationSite* site) {
  const std::vector<std::uint64_t>& frames = site->frames;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    const TraceModule* m = trace.module_of(frames[i]);
    if (!m || !is_allocator_plumbing(m->path)) {
      site->label_frame = i;
      return;
    }
  }
  site->all_plumbing = !frames.empty();
  site->label_frame = frames.empty() ? 0 : frames.size() - 1;
}

}  // namespace

TraceSummary summarize(const Trace& trace) {
  TraceSummary s;
  s.events = trace.events.size();
  if (!trace.events.empty()) s.duration_ns = trace.events.back().time_ns;
  for (const TraceEvent& e : trace.events)
    if (e.kind == EventKind::map || e.kind == EventKind::unmap) s.reserved_from_maps = true;

  struct Live {
    std::size_t lifetime;
  };
  std::unordered_map<std::uint64_t, Live> live;  // by block_key()
  std::map<std::vector<std::uint64_t>, std::uint32_t> site_index;
  std::set<std::uint32_t> threads;
  std::set<std::int32_t> devices;
  std::uint64_t live_bytes = 0, reserved = 0;

  auto sample = [&](std::uint64_t t) {
    std::uint64_t r = s.reserved_from_maps ? reserved : live_bytes;
    if (live_bytes > s.peak_live) {
      s.peak_live = live_bytes;
      s.peak_live_time_ns = t;
    }
    if (r > s.peak_reserved) {
      s.peak_reserved = r;
      s.peak_reserved_time_ns = t;
    }
    if (!s.samples.empty() && s.samples.back().time_ns == t) {
      s.samples.back().live = live_bytes;
      s.samples.back().reserved = r;
    } else {
      s.samples.push_back({t, live_bytes, r});
    }
  };

  for (const TraceEvent& e : trace.events) {
    s.count_by_kind[std::size_t(e.kind) < s.count_by_kind.size() ? std::size_t(e.kind) : 0]++;
    threads.insert(e.thread_id);
    devices.insert(e.device);
    if (is_alloc(e.kind)) {
      std::vector<std::uint64_t> frames = site_frames(trace, e);
      auto [it, inserted] = site_index.emplace(frames, std::uint32_t(s.sites.size()));
      if (inserted) {
        s.sites.emplace_back();
        s.sites.back().frames = std::move(frames);
        choose_label_frame(trace, &s.sites.back());
      }
      AllocationSite& site = s.sites[it->second];
      site.count++;
      site.bytes += e.size;
      site.live += e.size;
      site.peak_live = std::max(site.peak_live, site.live);
      s.bytes_allocated += e.size;
      s.size_histogram[size_bucket(e.size)]++;
      auto previous = live.find(block_key(e));
      if (previous != live.end()) {  // allocated again without a free we saw: close the old one
        Lifetime& old = s.lifetimes[previous->second.lifetime];
        live_bytes -= old.size;
        s.sites[old.site].live -= old.size;
        old.end_ns = e.time_ns;
        old.freed = true;
      }
      live[block_key(e)] = Live{s.lifetimes.size()};
      s.lifetimes.push_back({e.time_ns, 0, e.size, e.address, e.thread_id, e.device, it->second, false});
      live_bytes += e.size;
      sample(e.time_ns);
    } else if (is_free(e.kind)) {
      auto it = live.find(block_key(e));
      if (it == live.end()) {
        s.unmatched_frees++;
        continue;
      }
      Lifetime& l = s.lifetimes[it->second.lifetime];
      l.end_ns = e.time_ns;
      l.freed = true;
      live_bytes -= l.size;
      s.sites[l.site].live -= l.size;
      s.bytes_freed += l.size;
      live.erase(it);
      sample(e.time_ns);
    } else if (e.kind == EventKind::map) {
      reserved += e.size;
      sample(e.time_ns);
    } else if (e.kind == EventKind::unmap) {
      reserved -= std::min(reserved, e.size);
      sample(e.time_ns);
    }
  }
  s.threads = std::uint32_t(threads.size());
  s.devices = std::uint32_t(devices.size());
  s.live_at_end = live_bytes;
  s.blocks_live_at_end = live.size();

  std::vector<std::uint64_t> durations;
  for (Lifetime& l : s.lifetimes) {
    if (!l.freed) {
      l.end_ns = s.duration_ns;
      s.lifetime_histogram[9]++;
      continue;
    }
    std::uint64_t d = l.end_ns - l.start_ns;
    s.lifetime_histogram[lifetime_bucket(d)]++;
    durations.push_back(d);
  }
  if (!durations.empty()) {
    std::nth_element(durations.begin(), durations.begin() + durations.size() / 2, durations.end());
    s.median_lifetime_ns = durations[durations.size() / 2];
  }
  // Sort sites, then renumber the lifetimes' site indexes.
  std::vector<std::uint32_t> order(s.sites.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return s.sites[a].peak_live > s.sites[b].peak_live;
  });
  std::vector<std::uint32_t> new_index(order.size());
  std::vector<AllocationSite> sorted;
  sorted.reserve(order.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) {
    new_index[order[i]] = i;
    sorted.push_back(std::move(s.sites[order[i]]));
  }
  s.sites = std::move(sorted);
  for (Lifetime& l : s.lifetimes) l.site = new_index[l.site];
  return s;
}

std::vector<int> assign_lanes(const std::vector<const Lifetime*>& lifetimes) {
  std::vector<int> lane_of(lifetimes.size());
  using Busy = std::pair<std::uint64_t, int>;  // (end, lane), earliest end first
  std::priority_queue<Busy, std::vector<Busy>, std::greater<Busy>> busy;
  std::priority_queue<int, std::vector<int>, std::greater<int>> free_lanes;  // lowest lane first
  int lanes = 0;
  for (std::size_t i = 0; i < lifetimes.size(); ++i) {
    while (!busy.empty() && busy.top().first < lifetimes[i]->start_ns) {
      free_lanes.push(busy.top().second);
      busy.pop();
    }
    int lane;
    if (free_lanes.empty()) {
      lane = lanes++;
    } else {
      lane = free_lanes.top();
      free_lanes.pop();
    }
    lane_of[i] = lane;
    busy.push({lifetimes[i]->end_ns, lane});
  }
  return lane_of;
}

std::vector<MemorySample> downsample(const std::vector<MemorySample>& samples, std::size_t points) {
  if (samples.size() <= points || points < 2) return samples;
  std::vector<MemorySample> out;
  std::size_t per = (samples.size() + points - 1) / points;
  for (std::size_t i = 0; i < samples.size(); i += per) {
    MemorySample m = samples[i];
    for (std::size_t j = i; j < std::min(samples.size(), i + per); ++j) {
      m.live = std::max(m.live, samples[j].live);
      m.reserved = std::max(m.reserved, samples[j].reserved);
    }
    out.push_back(m);
  }
  out.push_back(samples.back());
  return out;
}

std::string format_size(std::uint64_t bytes) {
  char buf[32];
  return format_bytes(bytes, buf, sizeof buf);
}

std::string format_duration(std::uint64_t ns) {
  char buf[32];
  if (ns < 1000)
    std::snprintf(buf, sizeof buf, "%llu ns", static_cast<unsigned long long>(ns));
  else if (ns < 1000000)
    std::snprintf(buf, sizeof buf, "%.1f us", ns / 1e3);
  else if (ns < 1000000000)
    std::snprintf(buf, sizeof buf, "%.1f ms", ns / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.2f s", ns / 1e9);
  return buf;
}

}  // namespace gpushim::tracing
