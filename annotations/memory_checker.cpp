#include "annotations/memory_checker.h"

#include <link.h>

#include <cstring>

namespace gpushim {

bool memory_checker_attached() noexcept {
  return dl_iterate_phdr(
             [](dl_phdr_info* info, std::size_t, void*) -> int {
               return info->dlpi_name && std::strstr(info->dlpi_name, "libsanitizer-collection") ? 1 : 0;
             },
             nullptr) != 0;
}

}  // namespace gpushim
