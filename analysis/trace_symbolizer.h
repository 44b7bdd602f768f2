// Resolves recorded return addresses to function and file:line after the fact, from the module map in
// the trace, by running binutils' `addr2line` once per module on a batch of addresses (heaptrack
// resolves later too; nothing on the hot path symbolises). Modules that are gone or stripped give
// "module+0xoffset".
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "analysis/trace_reader.h"

namespace gpushim::tracing {

struct FrameSymbol {
  std::string function;   // demangled; empty when unknown
  std::string location;   // "file.cpp:42"; empty when there is no debug info
  std::string module;     // file name of the module
  std::uint64_t offset = 0;
  std::string text() const;  // "function (file:line)" or "module+0xoffset"
};

class Symbolizer {
 public:
  explicit Symbolizer(const Trace& trace) : trace_(trace) {}
  // Resolves every address in one batch per module.
  void resolve(const std::vector<std::uint64_t>& addresses);
  FrameSymbol lookup(std::uint64_t address) const;

 private:
  const Trace& trace_;
  std::map<std::uint64_t, FrameSymbol> symbols_;
};

}  // namespace gpushim::tracing
