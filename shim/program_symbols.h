// Functions the program itself defines (its executable, not its libraries), found by name in the symbol
// table of its file. A statically linked CUDA runtime's functions are there and nowhere else: the
// program's calls to them are bound when it is linked, and they are not exported.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gpushim::shim {

struct ProgramFunction {
  const char* name;
  void* address = nullptr;  // where it runs; null when the program does not define it
  std::size_t size = 0;     // its bytes, from the symbol
  bool ambiguous = false;   // the program defines two functions of this name: address stays null
};

// Fills in each function's address and size from /proc/self/exe's symbol table (elf/elf_file.h: .symtab,
// or .dynsym in a stripped program, which has none of a static runtime's). An unreadable file or a
// malformed one finds nothing. Allocates nothing on the heap: meant for a library constructor.
void find_program_functions(ProgramFunction* functions, std::size_t count) noexcept;

// The same for any ELF file, whose symbol values are moved by `load_bias` (the tests read damaged files).
void find_functions_in_file(const char* path, std::uintptr_t load_bias, ProgramFunction* functions,
                            std::size_t count) noexcept;

}  // namespace gpushim::shim
