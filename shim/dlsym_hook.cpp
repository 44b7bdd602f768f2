// gpushim's dlsym. The CUDA runtime gets the driver with dlopen("libcuda.so.1") and
// dlsym(h, "cuGetProcAddress_v2") (docs/measured-facts.md); PyTorch looks up cuMemFree_v2 the same way. We answer
// those names with gpushim's functions and every other lookup with exactly what glibc would answer.
//
// Two things make a dlsym hook tricky, both handled here:
//  - Re-entrance: looking a symbol up can run code (libcuda's constructors on the bootstrap's dlopen,
//    IFUNC resolvers) that calls dlsym again on this thread. A thread-local flag sends nested calls
//    straight to glibc, without substitution.
//  - RTLD_NEXT means "after the caller's object", and glibc finds the caller from its return address.
//    Called normally, glibc would see gpushim as the caller and search after gpushim: an interposer
//    loaded after us that looks up its own "next" would find itself and recurse forever. So for names we
//    do not substitute, the hook JUMPS to glibc's dlsym (a tail call: our caller's return address stays
//    on the stack, glibc answers exactly as without us, and nothing else runs). Only for the driver names
//    we substitute is RTLD_NEXT resolved here, by walking the link map after the real caller. The walk
//    calls dlopen(RTLD_NOLOAD), which an interposer of dlopen (compute-sanitizer's injection library)
//    may be in the middle of: seen on the H100 as a deadlock, hence the jump for everything else.
#include <dlfcn.h>
#include <link.h>

#include "driver/real_driver.h"
#include "shim/driver_entry_points.h"
#include "shim/driver_substitutions.h"

namespace {

// initial-exec: a plain TLS access; __tls_get_addr may allocate, which dlsym must not do.
thread_local bool in_dlsym __attribute__((tls_model("initial-exec"))) = false;

link_map* object_containing(const void* address) noexcept {
  Dl_info info;
  link_map* object = nullptr;
  if (dladdr1(address, &info, reinterpret_cast<void**>(&object), RTLD_DL_LINKMAP) == 0) return nullptr;
  return object;
}

// An object that has a file: the vDSO (named "linux-vdso.so.1") has none and the main program (named "")
// always comes before any caller's next anyway.
bool loaded_from_file(const link_map* object) noexcept {
  for (const char* c = object->l_name; c != nullptr && *c != '\0'; ++c) {
    if (*c == '/') return true;
  }
  return false;
}

// The symbol as defined by `object` itself, or nullptr. The handle comes from dlopen(RTLD_NOLOAD): a
// link_map pointer is glibc's handle, but objects loaded at startup get their search list only when
// dlopen'ed, and dlsym on one without it crashes. dlsym on a handle also searches the object's
// dependencies, so an answer from another object is not this object's.
void* defined_by(link_map* object, const char* symbol) noexcept {
  void* handle = dlopen(object->l_name, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return nullptr;
  // Only drops the reference RTLD_NOLOAD took: the object stays loaded, the handle valid. Closed
  // before the lookup so that dlsym is the last dl* call and dlerror() tells its outcome.
  dlclose(handle);
  void* found = gpushim::real_dlsym(handle, symbol);
  if (found == nullptr) return nullptr;
  link_map* const owner = object_containing(found);
  // No owner: a TLS variable or an absolute symbol. Take the object's own answer.
  return owner == nullptr || owner == object ? found : nullptr;
}

// glibc's RTLD_NEXT from `caller`: the first object after the caller's, in load order, that defines
// the symbol.
void* next_definition(const void* caller, const char* symbol) noexcept {
  link_map* const caller_object = object_containing(caller);
  if (caller_object == nullptr) return gpushim::real_dlsym(RTLD_NEXT, symbol);  // best effort
  for (link_map* object = caller_object->l_next; object != nullptr; object = object->l_next) {
    if (!loaded_from_file(object)) continue;
    if (void* found = defined_by(object, symbol)) return found;
  }
  return nullptr;  // dlerror() holds the last object's "undefined symbol: <symbol>"
}

// Everything but the jump: substitution, and RTLD_NEXT for the names we substitute.
__attribute__((noinline)) void* dlsym_substituting(void* handle, const char* symbol, const void* caller) noexcept {
  if (in_dlsym) return gpushim::real_dlsym(handle, symbol);
  in_dlsym = true;
  void* found = handle == RTLD_NEXT ? next_definition(caller, symbol) : gpushim::real_dlsym(handle, symbol);
  // Only where the lookup found the name (the handle has it): a probe for a missing symbol stays a miss.
  if (found != nullptr) {
    if (void* ours = gpushim::shim::substitute_for_symbol(symbol)) found = ours;
  }
  in_dlsym = false;
  return found;
}

}  // namespace

// Kept tiny so that both returns compile to jumps (tests/shim_interposition_test.cpp checks that an
// RTLD_NEXT lookup through us finds what glibc would).
extern "C" GPUSHIM_EXPORT void* dlsym(void* __restrict handle, const char* __restrict symbol) noexcept {
  if (handle == RTLD_NEXT && gpushim::shim::substitute_for_symbol(symbol) == nullptr) {
    if (gpushim::DlsymFunction glibc = gpushim::glibc_dlsym_function()) return glibc(handle, symbol);
  }
  return dlsym_substituting(handle, symbol, __builtin_return_address(0));
}
