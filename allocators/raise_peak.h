// A high-water mark that several threads raise without a lock.
//
// Why a compare-exchange loop and not a store of the maximum: two threads that each read the old peak
// and store their own value can lower it. Relaxed order: a peak is a statistic, read on its own.
#pragma once

#include <atomic>

namespace gpushim {

template <typename T>
inline void raise_peak(std::atomic<T>& peak, typename std::atomic<T>::value_type value) noexcept {
  T seen = peak.load(std::memory_order_relaxed);
  while (value > seen && !peak.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

}  // namespace gpushim
