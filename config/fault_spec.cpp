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

// "1.5s", "500ms", "100us", "250ns", "3m"; a bare number is seconds.
bool parse_duration(const std::string& text, std::uint64_t* ns) {
  std::size_t at = 0;
  long double value = 0;
  bool digits = false;
  for (; at < text.size() && text[at] >= '0' && text[at] <= '9'; ++at, digits = true)
    value = value * 10 + (text[at] - '0');
  if (at < text.size() && text[at] == '.') {
    long double scale = 0.1L;
    for (++at; at < text.size() && text[at] >= '0' && text[at] <= '9'; ++at, digits = true, scale /= 10)
      value += scale * (text[at] - '0');
  }
  if (!digits) return false;
  const std::string unit = text.substr(at);
  long double per_unit = 0;
  if (unit.empty() || unit == "s") per_unit = 1e9L;
  else if (unit == "ms") per_unit = 1e6L;
  else if (unit == "us") per_unit = 1e3L;
  else if (unit == "ns") per_unit = 1;
  else if (unit == "m") per_unit = 60e9L;
  else return false;
  const long double result = value * per_unit;
  if (result >= 9.2e18L) return false;  // beyond any run's length: a typo
  *ns = static_cast<std::uint64_t>(result + 0.5L);
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
