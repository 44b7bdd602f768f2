// A provider's record of what each map() made, by base address: unmap() must give back exactly what
// one earlier map() mapped (cuMemUnmap cannot split a mapping), and an address is traced to the
// mapping that covers it (IPC export, where memory lives). Not locked: the provider holds its own lock
// around every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>

#include "diagnostics/log.h"

namespace gpushim {

// `Mapping` has a `std::size_t bytes` member: the size one map() mapped at the base.
template <class Mapping>
class MappingTable {
 public:
  // False when the record cannot be allocated; the caller then gives the memory back.
  bool record(std::uintptr_t base, Mapping mapping) noexcept {
    try {
      mappings_[base] = std::move(mapping);
      return true;
    } catch (...) {
      return false;
    }
  }

  // Removes and hands over what one map() made at exactly `base` with exactly `bytes`. Anything else is
  // a bug in the algorithm that asks: it is reported once and refused, rather than leaving the driver
  // half-unmapped. Moves, never allocates.
  bool take(void* base, std::size_t bytes, Mapping* out) noexcept {
    auto it = mappings_.find(reinterpret_cast<std::uintptr_t>(base));
    if (it == mappings_.end() || it->second.bytes != bytes) {
      static bool reported = false;
      log_once(&reported, LogLevel::warn, "internal: unmap(%p, %zu) does not match one map()", base, bytes);
      return false;
    }
    *out = std::move(it->second);
    mappings_.erase(it);
    return true;
  }

  // Calls f(base, mapping) for every mapping, in address order.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& entry : mappings_) f(entry.first, entry.second);
  }

  // The mapping that covers `address` (its base in `*base`), or nullptr.
  const Mapping* covering(std::uintptr_t address, std::uintptr_t* base) const noexcept {
    auto it = mappings_.upper_bound(address);
    if (it == mappings_.begin()) return nullptr;
    --it;
    if (address - it->first >= it->second.bytes) return nullptr;
    *base = it->first;
    return &it->second;
  }

 private:
  std::map<std::uintptr_t, Mapping> mappings_;
};

}  // namespace gpushim
