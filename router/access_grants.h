// Which device may reach which device's gpushim memory because the program asked for it: peer access
// (cuCtxEnablePeerAccess) and pool access (cuMemPoolSetAccess) each grant it, and access ends only when
// neither holds any more. Pure bookkeeping, tested on the CPU; router/peer_access.cpp applies the
// changes it reports to the owner's backend.
#pragma once

namespace gpushim {

class AccessGrants {
 public:
  static constexpr int kMaxDevices = 64;  // as the router's device table
  enum Source : unsigned { peer_context = 1u, pool = 2u };
  enum class Change { none, granted, revoked };

  // Sets or clears one source of `accessor`'s access to `owner`'s memory; says whether the access as a
  // whole changed. A device's access to its own memory, or an ordinal out of range, never changes.
  Change set(int owner, int accessor, Source source, bool on) noexcept {
    if (!valid(owner) || !valid(accessor) || owner == accessor) return Change::none;
    unsigned& bits = bits_[owner][accessor];
    const bool before = bits != 0;
    bits = on ? (bits | source) : (bits & ~static_cast<unsigned>(source));
    const bool after = bits != 0;
    if (before == after) return Change::none;
    return after ? Change::granted : Change::revoked;
  }

  bool granted(int owner, int accessor) const noexcept {
    return valid(owner) && valid(accessor) && bits_[owner][accessor] != 0;
  }

 private:
  static bool valid(int device) noexcept { return device >= 0 && device < kMaxDevices; }
  unsigned bits_[kMaxDevices][kMaxDevices] = {};
};

}  // namespace gpushim
