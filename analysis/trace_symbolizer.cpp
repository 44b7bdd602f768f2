#include "analysis/trace_symbolizer.h"

#include <cxxabi.h>
#include <elf.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string_view>

#include "elf/elf_file.h"

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

std::string demangle(const std::string& name) {
  int status = 0;
  char* plain = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  if (status != 0 || plain == nullptr) return name;  // C symbols and names that are not mangled
  std::string out = plain;
  std::free(plain);
  return out;
}

std::string hex_of(const unsigned char* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += digits[p[i] >> 4], s += digits[p[i] & 15];
  return s;
}

// The NT_GNU_BUILD_ID note of a SHT_NOTE section, as lowercase hex; "" when it has none.
std::string build_id_in(const elf::ElfFile& file, const Elf64_Shdr& notes) {
  std::uint64_t at = notes.sh_offset;
  const std::uint64_t end = notes.sh_offset + notes.sh_size;
  while (at + sizeof(Elf64_Nhdr) <= end) {
    Elf64_Nhdr note;
    if (!file.read(at, &note)) return {};
    const std::uint64_t name_at = at + sizeof note;
    const std::uint64_t desc_at = name_at + ((note.n_namesz + 3) & ~3u);
    if (!file.holds(desc_at, note.n_descsz)) return {};
    if (note.n_type == NT_GNU_BUILD_ID && note.n_namesz == 4 && std::memcmp(file.at(name_at), "GNU", 4) == 0)
      return hex_of(file.at(desc_at), note.n_descsz);
    at = desc_at + ((note.n_descsz + 3) & ~3u);
  }
  return {};
}

}  // namespace

ModuleSymbols::ModuleSymbols(const std::string& path, const std::string& build_id) {
  const elf::ElfFile file(path.c_str());
  if (!file.ok()) {
    why_not_ = file.why_not();
    return;
  }
  const std::size_t names_index = file.section_names_index();
  const Elf64_Shdr names = names_index < file.section_count() ? file.section(names_index) : Elf64_Shdr{};
  std::string file_build_id;
  for (std::size_t i = 0; i < file.section_count(); ++i) {
    const Elf64_Shdr s = file.section(i);
    if (s.sh_type == SHT_NOTE && file.holds(s.sh_offset, s.sh_size) && file_build_id.empty())
      file_build_id = build_id_in(file, s);
    if (names_index < file.section_count() && file.holds(names.sh_offset + s.sh_name, 12) &&
        std::strncmp(reinterpret_cast<const char*>(file.at(names.sh_offset + s.sh_name)), ".debug_line", 12) == 0)
      has_line_table_ = true;
  }
  if (!build_id.empty() && !file_build_id.empty() && build_id != file_build_id) {
    why_not_ = "another build than the one recorded";
    has_line_table_ = false;
    return;
  }
  file.for_each_function([&](const Elf64_Sym& symbol, std::string_view name) {
    functions_.push_back({symbol.st_value, symbol.st_size, std::string(name)});
  });
  std::sort(functions_.begin(), functions_.end(), [](const Function& a, const Function& b) {
    return a.start != b.start ? a.start < b.start : a.size > b.size;
  });
  loaded_ = true;
}

std::string ModuleSymbols::function_at(std::uint64_t address) const {
  auto after = std::upper_bound(functions_.begin(), functions_.end(), address,
                                [](std::uint64_t a, const Function& f) { return a < f.start; });
  if (after == functions_.begin()) return {};
  const Function& f = *std::prev(after);
  // A symbol of size 0 (hand-written assembly) covers up to the next symbol.
  const bool inside = f.size ? address < f.start + f.size : after != functions_.end();
  return inside ? demangle(f.name) : std::string();
}

FrameSymbol symbolize_frame(const std::string& module_path, std::uint64_t offset, const std::string& build_id,
                            bool return_address) {
  static std::mutex mutex;
  static std::map<std::pair<std::string, std::string>, std::unique_ptr<ModuleSymbols>> modules;
  FrameSymbol frame;
  frame.module = base_name(module_path);
  frame.offset = offset;
  std::lock_guard<std::mutex> lock(mutex);
  std::unique_ptr<ModuleSymbols>& module = modules[{module_path, build_id}];
  if (!module) module = std::make_unique<ModuleSymbols>(module_path, build_id);
  if (module->loaded()) frame.function = module->function_at(return_address && offset ? offset - 1 : offset);
  return frame;
}

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
  for (const auto& [module, addrs] : by_module) {
    if (module->path.empty()) continue;
    const ModuleSymbols symbols(module->path, module->build_id);
    if (!symbols.loaded()) continue;  // missing here, or another build: addresses stay
    for (std::uint64_t a : addrs) symbols_[a].function = symbols.function_at(a - module->base - 1);
    if (!symbols.has_line_table() || !have_addr2line()) continue;
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
        // The line table names the function inlined at the address, which the symbol table cannot;
        // where both name the same function, the symbol table's name is the whole one (scope, parameters).
        if (function != "??" && current->function.find(function) == std::string::npos) current->function = function;
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
