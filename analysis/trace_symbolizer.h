// Names recorded return addresses after the fact (heaptrack resolves later too; nothing on the hot path
// symbolises): the function from the ELF symbol tables of the module file (.symtab, else .dynsym),
// demangled; the source line from its DWARF line table, read by binutils' addr2line, where the module
// has one. A module that is gone, is another build than the one recorded (build ids differ), or has no
// symbol for the address gives "module+0xoffset".
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "analysis/trace_reader.h"

namespace gpushim::tracing {

struct FrameSymbol {
  std::string function;   // demangled; empty when unknown
  std::string location;   // "file.cpp:42"; empty when there is no debug info
  std::string module;     // file name of the module
  std::uint64_t offset = 0;
  std::string text() const;  // "function (file:line)", "function", or "module+0xoffset"
};

// The function symbols of one ELF file, read once. Addresses are the file's own (the st_value space:
// a frame's address minus the module's load base, as TraceModule::base gives it).
class ModuleSymbols {
 public:
  // Reads `path`. When `build_id` (lowercase hex, as traces store it) is given and the file's own
  // differs, the file is another build than the one that ran: nothing is read, as its names would lie.
  explicit ModuleSymbols(const std::string& path, const std::string& build_id = "");
  bool loaded() const { return loaded_; }
  const std::string& why_not() const { return why_not_; }  // when !loaded(): "missing", "other build", ...
  bool has_line_table() const { return has_line_table_; }   // a .debug_line section: addr2line can give lines
  // The demangled name of the function whose code holds `address`; "" when no symbol covers it.
  std::string function_at(std::uint64_t address) const;

 private:
  struct Function {
    std::uint64_t start, size;
    std::string name;  // mangled
  };
  std::vector<Function> functions_;  // sorted by start
  bool loaded_ = false;
  bool has_line_table_ = false;
  std::string why_not_;
};

// One frame of a module on disk, named as the tools name it: for code outside the trace tools, such as
// the out-of-memory dump. `offset` is the frame's address minus the module's load base; a return
// address (the default) is looked up one byte earlier, inside the call. Modules are read once per
// process and kept (thread-safe).
FrameSymbol symbolize_frame(const std::string& module_path, std::uint64_t offset, const std::string& build_id = "",
                            bool return_address = true);

class Symbolizer {
 public:
  explicit Symbolizer(const Trace& trace) : trace_(trace) {}
  // Resolves every address; one addr2line run per module with a line table, for all its addresses.
  void resolve(const std::vector<std::uint64_t>& addresses);
  FrameSymbol lookup(std::uint64_t address) const;

 private:
  const Trace& trace_;
  std::map<std::uint64_t, FrameSymbol> symbols_;
};

}  // namespace gpushim::tracing
