// x86-64 only: elsewhere every redirect is refused (shim/function_redirect.h says why that is safe).
#include "shim/function_redirect.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

namespace gpushim::shim {

#if defined(__x86_64__)

namespace {

// movabs rax, imm64 ; jmp rax. rax may be clobbered at a function's entry: it carries no argument of a
// function with a fixed parameter list (System V ABI; only a variadic call passes a count in al), and
// every function redirected here has one.
constexpr std::size_t kEntryJumpBytes = 12;
// jmp qword ptr [rip+0] ; .quad target: the trampoline's jump back, which clobbers nothing.
constexpr std::size_t kReturnJumpBytes = 14;
// The longest prologue copied: a few instructions past the jump's 12 bytes.
constexpr std::size_t kMaxPrologueBytes = 32;
constexpr std::size_t kTrampolineBytes = kMaxPrologueBytes + kReturnJumpBytes;
// One call redirects a runtime's few functions; more are ignored.
constexpr std::size_t kMaxRedirects = 16;

bool is_rex(unsigned char byte) { return (byte & 0xF0) == 0x40; }
bool register_operands(unsigned char modrm) { return (modrm & 0xC0) == 0xC0; }  // mod 11: no memory operand

// The length of one movable instruction at `code`, or 0.
std::size_t movable_instruction_length(const unsigned char* code, std::size_t available) {
  if (available >= 4 && code[0] == 0xF3 && code[1] == 0x0F && code[2] == 0x1E && code[3] == 0xFA) return 4;  // endbr64
  if (code[0] >= 0x50 && code[0] <= 0x57) return 1;  // push r64
  const std::size_t op = is_rex(code[0]) ? 1 : 0;
  if (op >= available) return 0;
  const unsigned char opcode = code[op];
  if (op == 1 && opcode >= 0x50 && opcode <= 0x57) return 2;  // push r8-r15
  if (op + 1 >= available) return 0;
  const unsigned char modrm = code[op + 1];
  if (!register_operands(modrm)) return 0;
  switch (opcode) {
    case 0x89: case 0x8B:  // mov
    case 0x01: case 0x03:  // add
    case 0x29: case 0x2B:  // sub
    case 0x31: case 0x33:  // xor
    case 0x85:             // test
      return op + 2;
    case 0x83: return op + 3 <= available ? op + 3 : 0;  // add/sub/... r, imm8 (sub rsp, imm8)
    case 0x81: return op + 6 <= available ? op + 6 : 0;  // add/sub/... r, imm32
    default: return 0;
  }
}

void write_entry_jump(unsigned char* at, const void* target) {
  const auto address = reinterpret_cast<std::uint64_t>(target);
  at[0] = 0x48;
  at[1] = 0xB8;
  std::memcpy(at + 2, &address, sizeof address);
  at[10] = 0xFF;
  at[11] = 0xE0;
}

void write_return_jump(unsigned char* at, const void* target) {
  const auto address = reinterpret_cast<std::uint64_t>(target);
  const unsigned char jump[6] = {0xFF, 0x25, 0, 0, 0, 0};
  std::memcpy(at, jump, sizeof jump);
  std::memcpy(at + sizeof jump, &address, sizeof address);
}

// Makes the pages under [address, address + bytes) writable and executable while `write` runs, then
// read and execute again (a program's code pages). False, and nothing written, where the system refuses.
template <typename Write>
bool write_code(void* address, std::size_t bytes, Write write) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(address) & ~(page - 1);
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(address) + bytes + page - 1) & ~(page - 1);
  void* pages = reinterpret_cast<void*>(start);
  if (::mprotect(pages, end - start, PROT_READ | PROT_WRITE | PROT_EXEC) != 0) return false;
  write();
  ::mprotect(pages, end - start, PROT_READ | PROT_EXEC);
  __builtin___clear_cache(static_cast<char*>(address), static_cast<char*>(address) + bytes);
  return true;
}

}  // namespace

std::size_t movable_prologue_length(const unsigned char* code, std::size_t available, std::size_t wanted) noexcept {
  std::size_t length = 0;
  while (length < wanted) {
    if (length >= available) return 0;
    const std::size_t step = movable_instruction_length(code + length, available - length);
    if (step == 0) return 0;
    length += step;
  }
  return length;
}

std::size_t redirect_jump_length() noexcept { return kEntryJumpBytes; }

std::size_t redirect_functions(FunctionRedirect* redirects, std::size_t count) noexcept {
  if (count > kMaxRedirects) count = kMaxRedirects;
  // Every trampoline in one page, written first and made executable before any entry jumps to it.
  const std::size_t page_bytes = count * kTrampolineBytes;
  void* page = ::mmap(nullptr, page_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return 0;
  auto* trampolines = static_cast<unsigned char*>(page);
  std::size_t prologue[kMaxRedirects] = {};
  std::size_t prepared = 0;
  for (std::size_t i = 0; i < count; ++i) {
    auto* entry = static_cast<unsigned char*>(redirects[i].function);
    const std::size_t readable = redirects[i].size < kMaxPrologueBytes ? redirects[i].size : kMaxPrologueBytes;
    prologue[i] = entry ? movable_prologue_length(entry, readable, kEntryJumpBytes) : 0;
    if (prologue[i] == 0) continue;
    unsigned char* trampoline = trampolines + i * kTrampolineBytes;
    std::memcpy(trampoline, entry, prologue[i]);
    write_return_jump(trampoline + prologue[i], entry + prologue[i]);
    ++prepared;
  }
  if (prepared == 0 || ::mprotect(page, page_bytes, PROT_READ | PROT_EXEC) != 0) {
    ::munmap(page, page_bytes);
    return 0;
  }
  std::size_t redirected = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (prologue[i] == 0) continue;
    *redirects[i].original = trampolines + i * kTrampolineBytes;
    auto* entry = static_cast<unsigned char*>(redirects[i].function);
    if (write_code(entry, kEntryJumpBytes, [&] { write_entry_jump(entry, redirects[i].replacement); })) {
      ++redirected;
    } else {
      *redirects[i].original = nullptr;
    }
  }
  return redirected;  // the page stays for the process's life: the trampolines are the originals
}

#else  // not x86-64

std::size_t movable_prologue_length(const unsigned char*, std::size_t, std::size_t) noexcept { return 0; }
std::size_t redirect_jump_length() noexcept { return 0; }
std::size_t redirect_functions(FunctionRedirect*, std::size_t) noexcept { return 0; }

#endif

}  // namespace gpushim::shim
