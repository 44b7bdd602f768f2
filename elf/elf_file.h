// A 64-bit ELF file on disk, mapped read-only, with every read checked against the file's size, so a
// damaged or truncated file is refused, never read past. It has two readers: the symbolizer, which
// names a trace's return addresses (analysis/trace_symbolizer.cpp), and the redirect of a static CUDA
// runtime, which finds that runtime's functions in the program (shim/program_symbols.cpp). Opening one
// allocates nothing on the heap, so the preloaded library may do it in its constructor.
#pragma once

#include <elf.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace gpushim::elf {

class ElfFile {
 public:
  // Maps `path` and checks its header and section table; why_not() says what failed.
  explicit ElfFile(const char* path) noexcept;
  ~ElfFile();
  ElfFile(const ElfFile&) = delete;
  ElfFile& operator=(const ElfFile&) = delete;

  // "" for a readable 64-bit ELF file with an intact section table; else "cannot read the file",
  // "not a 64-bit ELF file" or "damaged section table".
  const char* why_not() const noexcept { return why_not_; }
  bool ok() const noexcept { return why_not_[0] == '\0'; }

  bool holds(std::uint64_t offset, std::uint64_t bytes) const noexcept {
    return offset <= size_ && bytes <= size_ - offset;
  }
  // memcpy, not a cast: a damaged file's offsets need not be aligned.
  template <typename T>
  bool read(std::uint64_t offset, T* out) const noexcept {
    if (!holds(offset, sizeof(T))) return false;
    std::memcpy(out, data_ + offset, sizeof(T));
    return true;
  }
  // Only after holds() said the bytes are there.
  const unsigned char* at(std::uint64_t offset) const noexcept { return data_ + offset; }

  std::size_t section_count() const noexcept { return ok() ? header_.e_shnum : 0; }
  Elf64_Shdr section(std::size_t index) const noexcept;  // index < section_count()
  std::size_t section_names_index() const noexcept { return header_.e_shstrndx; }

  // Each defined function (STT_FUNC or STT_GNU_IFUNC, in a section, at a nonzero address) of .symtab, or
  // of .dynsym where the file has no .symtab (a stripped file keeps only the exported ones; an exported
  // function is in both): visit(symbol, name). A name runs at most to the end of its string table.
  template <typename Visit>
  void for_each_function(Visit visit) const;

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  Elf64_Ehdr header_{};
  const char* why_not_ = "cannot read the file";
};

template <typename Visit>
void ElfFile::for_each_function(Visit visit) const {
  bool has_symtab = false;
  for (std::size_t i = 0; i < section_count(); ++i) has_symtab |= section(i).sh_type == SHT_SYMTAB;
  for (std::size_t i = 0; i < section_count(); ++i) {
    const Elf64_Shdr table = section(i);
    if (table.sh_type != (has_symtab ? SHT_SYMTAB : SHT_DYNSYM) || table.sh_link >= section_count()) continue;
    if (table.sh_entsize != sizeof(Elf64_Sym) || !holds(table.sh_offset, table.sh_size)) continue;
    const Elf64_Shdr strings = section(table.sh_link);
    if (!holds(strings.sh_offset, strings.sh_size)) continue;
    for (std::uint64_t offset = table.sh_offset; offset + sizeof(Elf64_Sym) <= table.sh_offset + table.sh_size;
         offset += sizeof(Elf64_Sym)) {
      Elf64_Sym symbol;
      read(offset, &symbol);
      const int type = ELF64_ST_TYPE(symbol.st_info);
      if ((type != STT_FUNC && type != STT_GNU_IFUNC) || symbol.st_shndx == SHN_UNDEF || symbol.st_value == 0) continue;
      if (symbol.st_name >= strings.sh_size) continue;
      const char* name = reinterpret_cast<const char*>(at(strings.sh_offset + symbol.st_name));
      visit(symbol, std::string_view(name, strnlen(name, strings.sh_size - symbol.st_name)));
    }
  }
}

}  // namespace gpushim::elf
