// Loaded after libgpushim.so (a DT_NEEDED of the test), like an interposer preloaded after gpushim:
// it defines next_lookup_probe and looks up "the next one" with dlsym(RTLD_NEXT, ...).
#include <dlfcn.h>

extern "C" __attribute__((visibility("default"))) char next_lookup_probe() { return 'a'; }

// Not a sibling call: glibc (and gpushim) find the caller from the return address, and a tail call
// would make the test program the caller.
extern "C" __attribute__((visibility("default"), optimize("no-optimize-sibling-calls"))) void*
next_lookup_from_first() {
  return dlsym(RTLD_NEXT, "next_lookup_probe");
}
