#include "providers/limited_provider.h"

namespace gpushim {

bool LimitedProvider::map(void* addr, std::size_t bytes) noexcept {
  // Claim the bytes first, so two threads racing to the cap cannot both pass it.
  std::size_t mapped = mapped_.load(std::memory_order_relaxed);
  do {
    if (bytes > cap_ || mapped > cap_ - bytes) return false;
  } while (!mapped_.compare_exchange_weak(mapped, mapped + bytes, std::memory_order_relaxed));
  if (inner_.map(addr, bytes)) return true;
  mapped_.fetch_sub(bytes, std::memory_order_relaxed);
  return false;
}

void LimitedProvider::unmap(void* addr, std::size_t bytes) noexcept {
  inner_.unmap(addr, bytes);
  mapped_.fetch_sub(bytes, std::memory_order_relaxed);
}

}  // namespace gpushim
