// Shared by the tracing tests: a temporary directory, and a small synthetic trace written through the
// real recorder whose totals are known by construction.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tracing/trace_recorder.h"

namespace gpushim::tracing::testing {

inline std::string make_temp_dir() {
  char pattern[] = "/tmp/gpushim_trace_test_XXXXXX";
  const char* dir = mkdtemp(pattern);
  return dir ? dir : "/tmp";
}

inline std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

constexpr std::uint64_t kMiB = 1ull << 20;

// Known by construction (see write_synthetic_trace):
constexpr std::uint64_t kSyntheticPeakLive = 5 * kMiB + 512;   // A freed, B + C + D live
constexpr std::uint64_t kSyntheticPeakReserved = 6 * kMiB;     // two maps before the unmap
constexpr std::uint64_t kSyntheticBytesAllocated = 6 * kMiB + 512;
constexpr std::uint64_t kSyntheticLiveAtEnd = 512;              // C is never freed

// Writes the synthetic trace with the real recorder. `stack_depth` > 0 records stacks too.
inline bool write_synthetic_trace(const std::string& path, int stack_depth = 0) {
  if (!start(path.c_str(), stack_depth)) return false;
  auto rec = [](EventKind k, std::uint64_t addr, std::uint64_t size, std::uint64_t stream = 0) {
    record(k, 0, stream, addr, size, BackendId::vmm);
  };
  rec(EventKind::map, 0x10000000, 4 * kMiB);
  rec(EventKind::alloc, 0x10000000, 1 * kMiB);             // A
  rec(EventKind::alloc, 0x10100000, 3 * kMiB);             // B
  rec(EventKind::free, 0x10000000, 1 * kMiB);              // A
  rec(EventKind::alloc_async, 0x10400000, 512, 0x77);      // C (never freed)
  rec(EventKind::map, 0x10400000, 2 * kMiB);
  rec(EventKind::alloc, 0x10500000, 2 * kMiB);             // D -> peak live 5 MiB + 512
  rec(EventKind::free, 0x10100000, 3 * kMiB);              // B
  rec(EventKind::free_async, 0x10500000, 2 * kMiB, 0x77);  // D
  rec(EventKind::alloc_failed, 0, 1ull << 30);
  rec(EventKind::out_of_memory, 0, 1ull << 30);
  rec(EventKind::unmap, 0x10400000, 2 * kMiB);
  rec(EventKind::cache_release, 0, 2 * kMiB);
  stop();
  return true;
}

}  // namespace gpushim::tracing::testing
