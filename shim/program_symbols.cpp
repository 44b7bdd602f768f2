#include "shim/program_symbols.h"

#include <link.h>

#include <cstdint>
#include <string_view>

#include "elf/elf_file.h"

namespace gpushim::shim {
namespace {

// Where the program's file is loaded: its addresses are the symbols' values plus this (0 for a program
// that is not position-independent). The loader lists the program first.
std::uintptr_t program_load_bias() {
  std::uintptr_t bias = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* out) {
        *static_cast<std::uintptr_t*>(out) = info->dlpi_addr;
        return 1;  // the first object only
      },
      &bias);
  return bias;
}

}  // namespace

void find_program_functions(ProgramFunction* functions, std::size_t count) noexcept {
  find_functions_in_file("/proc/self/exe", program_load_bias(), functions, count);
}

void find_functions_in_file(const char* path, std::uintptr_t load_bias, ProgramFunction* functions,
                            std::size_t count) noexcept {
  const elf::ElfFile file(path);
  file.for_each_function([&](const Elf64_Sym& symbol, std::string_view name) {
    // Any binding: a static runtime's functions are hidden in its archive, and the program's link makes
    // some of them local symbols, as a source file's `static` function would be (readelf: cudaMalloc
    // LOCAL, cudaMallocAsync GLOBAL with HIDDEN visibility). Not an IFUNC: its address is a resolver's.
    if (ELF64_ST_TYPE(symbol.st_info) != STT_FUNC) return;
    for (std::size_t f = 0; f < count; ++f) {
      ProgramFunction& function = functions[f];
      if (name != function.name) continue;
      void* const address = reinterpret_cast<void*>(load_bias + symbol.st_value);
      if (function.address == nullptr && !function.ambiguous) {
        function.address = address;
        function.size = symbol.st_size;
      } else if (function.address != address) {
        // Two functions of one name (the runtime's and a source file's own `static` one): which one the
        // callers mean cannot be told, so neither is taken.
        function.ambiguous = true;
        function.address = nullptr;
        function.size = 0;
      }
    }
  });
}

}  // namespace gpushim::shim
