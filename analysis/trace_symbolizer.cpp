#include "analysis/trace_symbolizer.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <set>

namespace gpushim::tracing {
namespace {

// addr2line takes addresses on its command line; this many keeps the line far below ARG_MAX.
constexpr std::size_t kAddressesPerRun = 256;

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string base_name(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool have_addr2line() {
  static const bool found = std::system("command -v addr2line >/dev/null 2>&1") == 0;
  return found;
}

}  // namespace

std::string FrameSymbol::text() const {
  if (!function.empty()) return location.empty() ? function : function + " (" + location + ")";
  char buf[64];
  std::snprintf(buf, sizeof buf, "+0x%llx", static_cast<unsigned long long>(offset));
  return (module.empty() ? std::string("?") : module) + buf;
}

void Symbolizer::resolve(const std::vector<std::uint64_t>& addresses) {
  std::map<const TraceModule*, std::set<std::uint64_t>> by_module;
  for (std::uint64_t a : addresses) {
    if (symbols_.count(a)) continue;
    const TraceModule* m = trace_.module_of(a);
    FrameSymbol& sym = symbols_[a];
    if (!m) {
      sym.offset = a;
      continue;
    }
    sym.module = base_name(m->path);
    sym.offset = a - m->base;
    by_module[m].insert(a);
  }
  if (!have_addr2line()) return;
  for (const auto& [module, addrs] : by_module) {
    if (module->path.empty() || access(module->path.c_str(), R_OK) != 0) continue;
    std::vector<std::uint64_t> list(addrs.begin(), addrs.end());
    for (std::size_t first = 0; first < list.size(); first += kAddressesPerRun) {
      std::size_t last = std::min(list.size(), first + kAddressesPerRun);
      // -a prints each address before its frames; -i adds the functions inlined at it, innermost
      // first. The first frame outside the recorder is the one worth showing.
      std::string command = "addr2line -a -i -f -C -e " + shell_quote(module->path);
      char buf[32];
      std::map<std::uint64_t, std::uint64_t> original;  // queried offset -> frame address
      for (std::size_t i = first; i < last; ++i) {
        // A return address points after the call; -1 lands on the call's own line.
        std::uint64_t offset = list[i] - module->base - 1;
        original[offset] = list[i];
        std::snprintf(buf, sizeof buf, " 0x%llx", static_cast<unsigned long long>(offset));
        command += buf;
      }
      command += " 2>/dev/null";
      FILE* pipe = popen(command.c_str(), "r");
      if (!pipe) return;
      char line[4096];
      FrameSymbol* current = nullptr;
      bool chosen = false;
      std::string function;
      bool expect_function = true;
      while (std::fgets(line, sizeof line, pipe)) {
        std::string text = line;
        while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
        if (text.rfind("0x", 0) == 0 && text.find_first_not_of("0123456789abcdefx") == std::string::npos) {
          auto it = original.find(std::strtoull(text.c_str(), nullptr, 16));
          current = it == original.end() ? nullptr : &symbols_[it->second];
          chosen = false;
          expect_function = true;
          continue;
        }
        if (expect_function) {
          function = text;
          expect_function = false;
          continue;
        }
        expect_function = true;
        if (!current || chosen) continue;
        if (function.rfind("gpushim::tracing::record", 0) == 0 ||
            function.rfind("gpushim::tracing::enabled", 0) == 0)
          continue;  // the recorder's inline entry points, inlined into the caller
        auto discriminator = text.find(" (discriminator");
        if (discriminator != std::string::npos) text.resize(discriminator);
        if (function != "??") current->function = function;
        if (text.rfind("??", 0) != 0) current->location = base_name(text);
        chosen = true;
      }
      pclose(pipe);
    }
  }
}

FrameSymbol Symbolizer::lookup(std::uint64_t address) const {
  auto it = symbols_.find(address);
  if (it != symbols_.end()) return it->second;
  FrameSymbol sym;
  sym.offset = address;
  return sym;
}

}  // namespace gpushim::tracing
