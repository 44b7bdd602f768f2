// The entries of a fake statically linked CUDA runtime (tests/shim.cmake, shim_direct_static_runtime_test):
// each runtime function starts with the prologue CUDA 13's libcudart_static.a gives cudaMalloc (objdump of
// its cudart_static.o), which gpushim must move to a trampoline to redirect the function
// (shim/function_redirect.h), then runs the fake runtime's body of the same function
// (tests/fake_driver/fake_libcudart.cpp built with FAKE_CUDART_STATIC: fake_static_<name>). Hidden, as the
// real archive's are, so the program's link makes them local symbols, where gpushim must still find them.
#if defined(__x86_64__)
#define RUNTIME_ENTRY(name)                                   \
  .text;                                                      \
  .globl name;                                                \
  .hidden name;                                               \
  .type name, @function;                                      \
  name:                                                       \
  push %rbp;                                                  \
  mov %rsp, %rbp;                                             \
  push %r15;                                                  \
  push %r14;                                                  \
  push %r13;                                                  \
  mov %rsi, %r13;                                             \
  push %r12;                                                  \
  mov %rdi, %r12;                                             \
  push %rbx;                                                  \
  sub $0xd8, %rsp;                                            \
  mov %r12, %rdi;                                             \
  mov %r13, %rsi;                                             \
  call fake_static_##name@PLT;                                \
  add $0xd8, %rsp;                                            \
  pop %rbx;                                                   \
  pop %r12;                                                   \
  pop %r13;                                                   \
  pop %r14;                                                   \
  pop %r15;                                                   \
  pop %rbp;                                                   \
  ret;                                                        \
  .size name, . - name

RUNTIME_ENTRY(cudaMalloc)
RUNTIME_ENTRY(cudaFree)
RUNTIME_ENTRY(cudaMallocAsync)
RUNTIME_ENTRY(cudaMallocAsync_ptsz)
RUNTIME_ENTRY(cudaFreeAsync)
RUNTIME_ENTRY(cudaFreeAsync_ptsz)
#endif

.section .note.GNU-stack, "", @progbits
