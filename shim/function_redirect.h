// Sends every call of a function that another module defines to a function of ours, and keeps the
// original callable. gpushim uses it for a statically linked CUDA runtime (nvcc's default), whose
// cudaMalloc the program calls directly: no symbol lookup happens that a preloaded library could answer
// (shim/static_runtime_redirects.cpp).
//
// How: the function's first instructions are copied to a trampoline, which runs them and then jumps to
// the instruction after them, so the trampoline is the original function. The function's entry is then
// overwritten with an absolute jump to the replacement (12 bytes on x86-64).
//
// Only instructions that mean the same wherever they run are copied: register pushes and register-to-
// register moves, arithmetic on a register with an immediate (the stack adjustment), and endbr64. The
// CUDA runtime's allocate and free functions start with exactly these. A function that starts with
// anything else (a RIP-relative load, a branch) is refused. It keeps running as before, so a refusal
// costs speed, never correctness. On other architectures every function is refused.
//
// What it assumes and cannot check: that no branch of the function leads back into its first 12 bytes
// (a compiled prologue, register saves and the frame's setup, is never a branch target), and that the
// process does not enforce indirect-branch tracking (the trampoline's jump back lands behind the
// function's endbr64; Linux does not enforce it for user programs).
//
// The entry is rewritten while other threads could run it only if the caller allows that. gpushim does it
// in its library constructor, before the program's own constructors and main.
#pragma once

#include <cstddef>

namespace gpushim::shim {

struct FunctionRedirect {
  void* function = nullptr;     // the entry to send elsewhere (null: skipped)
  std::size_t size = 0;         // the function's bytes (its symbol's size): no more of it is read
  void* replacement = nullptr;  // where its calls go
  void** original = nullptr;    // receives the trampoline before the entry changes; untouched when refused
};

// Redirects each function it can (the first 16); returns how many. A function whose prologue cannot be moved, or whose
// code page cannot be made writable, is left as it was.
std::size_t redirect_functions(FunctionRedirect* redirects, std::size_t count) noexcept;

// The length of the whole instructions at `code` that the trampoline may copy, once it reaches at least
// `wanted` bytes; 0 when an instruction before that point is not one of them. Reads at most `available`
// bytes. Exposed for the tests.
std::size_t movable_prologue_length(const unsigned char* code, std::size_t available, std::size_t wanted) noexcept;

// The bytes the entry's jump takes: what movable_prologue_length must find (0 where unsupported).
std::size_t redirect_jump_length() noexcept;

}  // namespace gpushim::shim
