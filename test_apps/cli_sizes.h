// What alloc_bench and alloc_torture share on their command lines (CLI11, host compiler only): sizes read
// as GPUSHIM_ variables read them (config/settings.h, parse_size: "64K" = 65536, "2GB" = 2,000,000,000,
// "2GiB" = "2G" = 2^31), and one way to parse.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "config/settings.h"

namespace test_apps {

// CLI11 check of a size option given as text; the message says what is accepted.
inline CLI::Validator size_check() {
  return CLI::Validator(
      [](const std::string& text) -> std::string {
        std::uint64_t bytes = 0;
        if (!gpushim::parse_size(text.c_str(), &bytes) || bytes == 0)
          return "not a size: " + text + " (write 256, 64K, 256MiB, 2GB, 1G)";
        return {};
      },
      "SIZE");
}

// The bytes of a size that size_check() accepted.
inline std::uint64_t checked_size(const std::string& text) {
  std::uint64_t bytes = 0;
  gpushim::parse_size(text.c_str(), &bytes);
  return bytes;
}

// Parses argv; --help prints the usage and exits 0. False (after CLI11 printed why) on a bad option.
inline bool parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (app.exit(e) == 0) std::exit(0);
    return false;
  }
  return true;
}

}  // namespace test_apps
