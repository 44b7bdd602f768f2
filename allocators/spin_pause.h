// One step of a spin-wait: tells the core that this thread only waits (x86 `pause`, Arm `yield`), so it
// yields pipeline resources to a sibling thread and leaves the loop without a memory-order flush. For the
// locks that spin before they sleep or yield (allocators/adaptive_mutex.h, router/spin_lock.h).
#pragma once

namespace gpushim {

inline void spin_pause() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace gpushim
