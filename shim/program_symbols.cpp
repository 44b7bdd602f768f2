#include "shim/program_symbols.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>

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

// The file, mapped read-only, with every offset checked against its size before it is followed.
class ElfFile {
 public:
  ElfFile(const void* bytes, std::size_t size) : bytes_(static_cast<const unsigned char*>(bytes)), size_(size) {}

  bool holds(std::uint64_t offset, std::uint64_t length) const {
    return offset <= size_ && length <= size_ - offset;
  }
  template <typename T>
  const T* at(std::uint64_t offset) const {
    return holds(offset, sizeof(T)) ? reinterpret_cast<const T*>(bytes_ + offset) : nullptr;
  }
  const char* string_at(const Elf64_Shdr& table, std::uint32_t index) const {
    if (index >= table.sh_size || !holds(table.sh_offset, table.sh_size)) return nullptr;
    const char* text = reinterpret_cast<const char*>(bytes_ + table.sh_offset);
    // The name must end inside its table.
    return std::memchr(text + index, '\0', table.sh_size - index) ? text + index : nullptr;
  }

 private:
  const unsigned char* bytes_;
  std::size_t size_;
};

bool is_native_elf(const Elf64_Ehdr& header) {
  return std::memcmp(header.e_ident, ELFMAG, SELFMAG) == 0 && header.e_ident[EI_CLASS] == ELFCLASS64 &&
         header.e_shentsize == sizeof(Elf64_Shdr);
}

// Looks the functions up in one symbol table; returns how many it found.
std::size_t find_in_table(const ElfFile& file, const Elf64_Shdr& symbols, const Elf64_Shdr& names,
                          std::uintptr_t bias, ProgramFunction* functions, std::size_t count) {
  if (symbols.sh_entsize != sizeof(Elf64_Sym) || !file.holds(symbols.sh_offset, symbols.sh_size)) return 0;
  std::size_t found = 0;
  const std::uint64_t entries = symbols.sh_size / sizeof(Elf64_Sym);
  for (std::uint64_t i = 0; i < entries; ++i) {
    const Elf64_Sym* symbol = file.at<Elf64_Sym>(symbols.sh_offset + i * sizeof(Elf64_Sym));
    // Any binding: a static runtime's functions are hidden in its archive, and the program's link makes
    // some of them local symbols, as a source file's `static` function would be (readelf: cudaMalloc
    // LOCAL, cudaMallocAsync GLOBAL with HIDDEN visibility).
    if (symbol == nullptr || ELF64_ST_TYPE(symbol->st_info) != STT_FUNC || symbol->st_shndx == SHN_UNDEF ||
        symbol->st_value == 0) {
      continue;
    }
    const char* name = file.string_at(names, symbol->st_name);
    if (name == nullptr) continue;
    for (std::size_t f = 0; f < count; ++f) {
      if (std::strcmp(functions[f].name, name) != 0) continue;
      void* const address = reinterpret_cast<void*>(bias + symbol->st_value);
      if (functions[f].address == nullptr && !functions[f].ambiguous) {
        functions[f].address = address;
        functions[f].size = symbol->st_size;
        ++found;
      } else if (functions[f].address != address) {
        // Two functions of one name (the runtime's and a source file's own `static` one): which one the
        // callers mean cannot be told, so neither is taken.
        functions[f].ambiguous = true;
        functions[f].address = nullptr;
        functions[f].size = 0;
      }
    }
  }
  return found;
}

}  // namespace

void find_program_functions(ProgramFunction* functions, std::size_t count) noexcept {
  find_functions_in_file("/proc/self/exe", program_load_bias(), functions, count);
}

void find_functions_in_file(const char* path, std::uintptr_t load_bias, ProgramFunction* functions,
                            std::size_t count) noexcept {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat status {};
  void* mapped = MAP_FAILED;
  if (::fstat(fd, &status) == 0 && status.st_size > 0) {
    mapped = ::mmap(nullptr, static_cast<std::size_t>(status.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  }
  ::close(fd);
  if (mapped == MAP_FAILED) return;
  const auto size = static_cast<std::size_t>(status.st_size);
  const ElfFile file(mapped, size);
  const Elf64_Ehdr* header = file.at<Elf64_Ehdr>(0);
  if (header != nullptr && is_native_elf(*header) && file.holds(header->e_shoff, std::uint64_t{header->e_shnum} * sizeof(Elf64_Shdr))) {
    const auto* sections = file.at<Elf64_Shdr>(header->e_shoff);
    // The full table first; the exported one where the program was stripped of it.
    for (const std::uint32_t type : {SHT_SYMTAB, SHT_DYNSYM}) {
      std::size_t found = 0;
      for (std::uint16_t s = 0; s < header->e_shnum; ++s) {
        if (sections[s].sh_type != type || sections[s].sh_link >= header->e_shnum) continue;
        found += find_in_table(file, sections[s], sections[sections[s].sh_link], load_bias, functions, count);
      }
      if (found > 0) break;
    }
  }
  ::munmap(mapped, size);
}

}  // namespace gpushim::shim
