// Redirecting a function and finding it (shim/function_redirect.h, shim/program_symbols.h), the two
// halves of how gpushim serves a statically linked CUDA runtime (shim/static_runtime_redirects.cpp).
// Which prologues may move, byte by byte; a redirect of machine code written here, and a refusal that
// leaves the code as it was; and the symbol lookup over this program, a stripped copy and damaged files.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "shim/function_redirect.h"
#include "shim/program_symbols.h"

using gpushim::shim::FunctionRedirect;
using gpushim::shim::movable_prologue_length;
using gpushim::shim::ProgramFunction;
using gpushim::shim::redirect_functions;
using gpushim::shim::redirect_jump_length;

extern "C" __attribute__((noinline, used)) int function_redirect_test_marker(int x) { return x + 1; }
// A file-local function with an unmangled name: a local symbol, as each of a static runtime's functions
// is in the program that links it.
extern "C" {
static __attribute__((noinline, used)) int function_redirect_test_local(int x) { return x + 2; }
}
// Defined here and, file-local, in shim_function_redirect_second_file.cpp: two functions of one name.
extern "C" __attribute__((noinline, used)) int function_redirect_test_twice(int x) { return x * 2; }
extern "C" int function_redirect_second_file_call(int x);

namespace {

#if defined(__x86_64__)

using Bytes = std::vector<unsigned char>;

// CUDA 13's libcudart_static.a, the first bytes of cudaMalloc and cudaFree (objdump of cudart_static.o).
const Bytes kCudaMallocEntry = {0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x41, 0x55,
                                0x49, 0x89, 0xf5, 0x41, 0x54, 0x49, 0x89, 0xfc, 0x53};
const Bytes kCudaFreeEntry = {0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56,
                              0x41, 0x55, 0x41, 0x54, 0x49, 0x89, 0xfc, 0x53};

std::size_t movable(const Bytes& code) { return movable_prologue_length(code.data(), code.size(), redirect_jump_length()); }

TEST(MovablePrologue, TheStaticRuntimesEntriesMoveInWholeInstructions) {
  EXPECT_EQ(movable(kCudaMallocEntry), 13u);  // push rbp; mov rbp,rsp; push r15; push r14; push r13; mov r13,rsi
  EXPECT_EQ(movable(kCudaFreeEntry), 12u);    // ... push r13; push r12
}

TEST(MovablePrologue, EndbrAndStackAdjustmentsMove) {
  // endbr64; push rbp; mov rbp,rsp; sub rsp,0x20; (then anything)
  EXPECT_EQ(movable({0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x20, 0xe8}), 12u);
  // sub rsp,0x118 (imm32); push rbx; xor eax,eax; mov rbx,rdi
  EXPECT_EQ(movable({0x48, 0x81, 0xec, 0x18, 0x01, 0x00, 0x00, 0x53, 0x31, 0xc0, 0x48, 0x89, 0xfb}), 13u);
}

TEST(MovablePrologue, CodeThatDependsOnWhereItRunsIsRefused) {
  // mov rax,[rip+0x1234]: RIP-relative, it would read elsewhere from the trampoline.
  EXPECT_EQ(movable({0x48, 0x8b, 0x05, 0x34, 0x12, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56}), 0u);
  // push rbp; jmp rel32 before 12 bytes.
  EXPECT_EQ(movable({0x55, 0xe9, 0x00, 0x00, 0x00, 0x00, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90}), 0u);
  // push rbp; call rel32.
  EXPECT_EQ(movable({0x55, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90}), 0u);
  // mov [rbp-8],rdi: a memory operand (mod 01).
  EXPECT_EQ(movable({0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0x7d, 0xf8, 0x41, 0x57, 0x41, 0x56, 0x90}), 0u);
}

TEST(MovablePrologue, AFunctionShorterThanTheJumpIsRefused) {
  const Bytes push_only = {0x55, 0x48, 0x89, 0xe5, 0x41, 0x57};  // 6 movable bytes, then the symbol ends
  EXPECT_EQ(movable(push_only), 0u);
  EXPECT_EQ(movable_prologue_length(kCudaMallocEntry.data(), 11, redirect_jump_length()), 0u);
  // An instruction cut by the end: push r15 is two bytes, one is there.
  EXPECT_EQ(movable_prologue_length(kCudaFreeEntry.data(), 5, 5), 0u);
}

// Machine code in a page of its own, executable as a program's code is.
class CodePage {
 public:
  explicit CodePage(const Bytes& code) {
    page_ = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page_ == MAP_FAILED) return;
    std::memcpy(page_, code.data(), code.size());
    size_ = code.size();
    ::mprotect(page_, kBytes, PROT_READ | PROT_EXEC);
  }
  ~CodePage() {
    if (page_ != MAP_FAILED) ::munmap(page_, kBytes);
  }
  void* entry() const { return page_; }
  std::size_t size() const { return size_; }
  Bytes bytes() const { return Bytes(static_cast<unsigned char*>(page_), static_cast<unsigned char*>(page_) + size_); }

 private:
  static constexpr std::size_t kBytes = 4096;
  void* page_ = MAP_FAILED;
  std::size_t size_ = 0;
};

using Add = long (*)(long, long);

// The static runtime's prologue, then rax = rdi + rsi, then its epilogue: a function of two arguments whose
// entry must move as cudaMalloc's does.
Bytes function_with_runtime_prologue() {
  Bytes code = kCudaMallocEntry;                       // ... push r12; mov r12,rdi; push rbx
  const Bytes body = {0x4a, 0x8d, 0x04, 0x2f,           // lea rax,[rdi+r13] (r13 = rsi, saved above)
                      0x5b, 0x41, 0x5c, 0x41, 0x5d,     // pop rbx; pop r12; pop r13
                      0x41, 0x5e, 0x41, 0x5f, 0x5d,     // pop r14; pop r15; pop rbp
                      0xc3};                            // ret
  code.insert(code.end(), body.begin(), body.end());
  return code;
}

Add g_original = nullptr;
long add_then_times_ten(long a, long b) { return g_original(a, b) * 10; }

TEST(FunctionRedirect, CallsReachTheReplacementAndTheTrampolineIsTheOriginal) {
  const CodePage code(function_with_runtime_prologue());
  ASSERT_NE(code.entry(), MAP_FAILED);
  const auto function = reinterpret_cast<Add>(code.entry());
  ASSERT_EQ(function(2, 3), 5);
  void* original = nullptr;
  FunctionRedirect redirect{code.entry(), code.size(), reinterpret_cast<void*>(&add_then_times_ten), &original};
  ASSERT_EQ(redirect_functions(&redirect, 1), 1u);
  ASSERT_NE(original, nullptr);
  g_original = reinterpret_cast<Add>(original);
  EXPECT_EQ(g_original(2, 3), 5) << "the trampoline runs the moved instructions, then the rest";
  EXPECT_EQ(function(2, 3), 50) << "the entry now jumps to the replacement";
  EXPECT_EQ(function(-7, 4), -30);
}

TEST(FunctionRedirect, ARefusedFunctionIsLeftAsItWas) {
  Bytes rip_relative = {0x48, 0x8d, 0x05, 0x00, 0x00, 0x00, 0x00};  // lea rax,[rip+0]
  rip_relative.insert(rip_relative.end(), {0x48, 0x8d, 0x04, 0x37, 0xc3, 0x90, 0x90, 0x90, 0x90, 0x90});  // lea rax,[rdi+rsi]; ret
  const CodePage refused(rip_relative);
  const CodePage accepted(function_with_runtime_prologue());
  const Bytes before = refused.bytes();
  void* refused_original = reinterpret_cast<void*>(0x1);
  void* accepted_original = nullptr;
  FunctionRedirect redirects[] = {
      {refused.entry(), refused.size(), reinterpret_cast<void*>(&add_then_times_ten), &refused_original},
      {nullptr, 0, reinterpret_cast<void*>(&add_then_times_ten), nullptr},  // not found: skipped
      {accepted.entry(), accepted.size(), reinterpret_cast<void*>(&add_then_times_ten), &accepted_original}};
  EXPECT_EQ(redirect_functions(redirects, 3), 1u);
  EXPECT_EQ(refused.bytes(), before);
  EXPECT_EQ(refused_original, reinterpret_cast<void*>(0x1)) << "a refusal leaves the slot untouched";
  EXPECT_EQ(reinterpret_cast<Add>(refused.entry())(2, 3), 5);
  g_original = reinterpret_cast<Add>(accepted_original);
  EXPECT_EQ(reinterpret_cast<Add>(accepted.entry())(2, 3), 50);
}

#endif  // __x86_64__

// ---- the symbol lookup ----

std::string self_path() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  return n > 0 ? std::string(path, static_cast<std::size_t>(n)) : std::string();
}

std::string scratch_file(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "function_redirect_" + std::to_string(::getpid()) + "_" + name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

std::string file_contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(ProgramSymbols, FindsTheProgramsOwnFunctionsAndNothingElse) {
  ProgramFunction functions[] = {{"function_redirect_test_marker"}, {"no_such_function_anywhere"}, {"malloc"},
                                 {"function_redirect_test_local"}, {"function_redirect_test_twice"}};
  gpushim::shim::find_program_functions(functions, 5);
  EXPECT_EQ(functions[0].address, reinterpret_cast<void*>(&function_redirect_test_marker));
  EXPECT_GT(functions[0].size, 0u);
  EXPECT_EQ(functions[1].address, nullptr);
  EXPECT_EQ(functions[2].address, nullptr) << "malloc is libc's: only the program's own definitions count";
  EXPECT_EQ(functions[3].address, reinterpret_cast<void*>(&function_redirect_test_local))
      << "a local symbol counts: the static runtime's are local";
  EXPECT_EQ(functions[4].address, nullptr) << "two functions of one name: neither is taken";
  EXPECT_TRUE(functions[4].ambiguous);
  EXPECT_EQ(function_redirect_test_twice(5) + function_redirect_second_file_call(5), 25);
}

TEST(ProgramSymbols, DamagedAndMissingFilesFindNothing) {
  const std::string program = file_contents(self_path());
  ASSERT_GT(program.size(), 4096u);
  std::vector<std::string> damaged = {
      "",                                      // empty
      "\x7f" "ELF",                            // a header cut short
      program.substr(0, program.size() / 2),   // section headers (at the end) cut off
      std::string(8192, '\xff'),               // not ELF
  };
  std::string bad_offsets = program;          // the section header table points past the end
  std::memset(&bad_offsets[0x28], 0x7f, 8);    // e_shoff
  damaged.push_back(bad_offsets);
  for (std::size_t i = 0; i < damaged.size(); ++i) {
    const std::string path = scratch_file("damaged" + std::to_string(i), damaged[i]);
    ProgramFunction function[] = {{"function_redirect_test_marker"}};
    gpushim::shim::find_functions_in_file(path.c_str(), 0, function, 1);
    EXPECT_EQ(function[0].address, nullptr) << "file " << i;
    std::remove(path.c_str());
  }
  ProgramFunction function[] = {{"function_redirect_test_marker"}};
  gpushim::shim::find_functions_in_file("/nonexistent/gpushim/program", 0, function, 1);
  EXPECT_EQ(function[0].address, nullptr);
}

TEST(ProgramSymbols, AnIntactCopyFindsTheSameSymbol) {
  // The control for the damaged files above: the same bytes undamaged do find it.
  const std::string path = scratch_file("intact", file_contents(self_path()));
  ProgramFunction function[] = {{"function_redirect_test_marker"}};
  gpushim::shim::find_functions_in_file(path.c_str(), 0, function, 1);
  EXPECT_NE(function[0].address, nullptr);
  std::remove(path.c_str());
}

}  // namespace
