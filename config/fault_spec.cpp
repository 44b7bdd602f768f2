#include "config/fault_spec.h"

#include <cstring>
#include <string>

#include "config/settings.h"

namespace gpushim {
namespace {

// A count from 1: digits only, no sign, no unit.
bool parse_count(const std::string& text, std::uint64_t* out) {
  if (text.empty() || text.size() > 18) return false;  // 18 digits cannot overflow 64 bits
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + std::uint64_t(c - '0');
  }
  if (value == 0) return false;
  *out = value;
  return true;
}

}  // namespace

bool parse_fault_spec(const char* text, FaultSpec* out) {
  if (text == nullptr) return false;
  FaultSpec spec;
  const std::string all(text);
  std::size_t start = 0;
  bool any = false;
  while (start <= all.size()) {
    std::size_t comma = all.find(',', start);
    if (comma == std::string::npos) comma = all.size();
    std::string term = all.substr(start, comma - start);
    while (!term.empty() && term.front() == ' ') term.erase(term.begin());
    while (!term.empty() && term.back() == ' ') term.pop_back();
    if (term.rfind("size>=", 0) == 0) {
      if (spec.min_bytes || !parse_size(term.c_str() + 6, &spec.min_bytes) || spec.min_bytes == 0) return false;
    } else if (term.rfind("after=", 0) == 0) {
      if (spec.after_ns || !parse_duration(term.substr(6), &spec.after_ns)) return false;
    } else if (term.rfind("nth=", 0) == 0) {
      if (spec.nth || spec.every || !parse_count(term.substr(4), &spec.nth)) return false;
    } else if (term.rfind("every=", 0) == 0) {
      if (spec.nth || spec.every || !parse_count(term.substr(6), &spec.every)) return false;
    } else {
      return false;
    }
    any = true;
    start = comma + 1;
  }
  if (!any) return false;
  spec.armed = true;
  *out = spec;
  return true;
}

}  // namespace gpushim
