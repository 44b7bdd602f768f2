#pragma once

// Thread-locals read on every call are constant-initialised and initial-exec: one %fs-relative load.
// Inside a shared library the default model calls __tls_get_addr on every access (which may also
// allocate on the first access from a library loaded with dlopen), and a thread_local with a
// constructor adds an init check: callgrind of bench/router_pair_bench showed ~260 instructions per
// alloc+free pair in the two. libgpushim.so is preloaded, so its TLS sits in the static block.
//
// Kept here, below router/, tracing/ and diagnostics/, so every layer uses the same spelling.
#define GPUSHIM_HOT_TLS thread_local __attribute__((tls_model("initial-exec")))
