#include "elf/elf_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace gpushim::elf {

ElfFile::ElfFile(const char* path) noexcept {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat info {};
  if (::fstat(fd, &info) == 0 && S_ISREG(info.st_mode) && info.st_size > 0) {
    void* p = ::mmap(nullptr, static_cast<std::size_t>(info.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) data_ = static_cast<const unsigned char*>(p), size_ = static_cast<std::size_t>(info.st_size);
  }
  ::close(fd);
  if (data_ == nullptr) return;
  if (!read(0, &header_) || std::memcmp(header_.e_ident, ELFMAG, SELFMAG) != 0 ||
      header_.e_ident[EI_CLASS] != ELFCLASS64 || header_.e_shentsize != sizeof(Elf64_Shdr)) {
    why_not_ = "not a 64-bit ELF file";
    return;
  }
  if (!holds(header_.e_shoff, std::uint64_t{header_.e_shnum} * sizeof(Elf64_Shdr))) {
    why_not_ = "damaged section table";
    return;
  }
  why_not_ = "";
}

ElfFile::~ElfFile() {
  if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
}

Elf64_Shdr ElfFile::section(std::size_t index) const noexcept {
  Elf64_Shdr section{};
  read(header_.e_shoff + index * sizeof(Elf64_Shdr), &section);
  return section;
}

}  // namespace gpushim::elf
