// The alloc_torture workload, written once against a small device interface so the same sequence of
// allocations, kernels and frees runs through the CUDA runtime (static or shared) and the driver API.
// The core knows nothing of CUDA headers: a stream is the driver's opaque CUstream_st*, which is also
// what cudaStream_t points to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

struct CUstream_st;

namespace torture {

using Stream = CUstream_st*;
// The legacy default stream (NULL handle) and the per-thread default stream (CU_STREAM_PER_THREAD,
// cudaStreamPerThread): the same values in the runtime and the driver API.
inline Stream legacy_default_stream() { return nullptr; }
inline Stream per_thread_default_stream() { return reinterpret_cast<Stream>(std::uintptr_t{0x2}); }

// What a program variant provides. Every call either succeeds or reports the failed CUDA call through
// fail() and ends the process with exit code 2; the core never sees an error code.
class Device {
 public:
  virtual ~Device() = default;
  virtual std::string variant() const = 0;  // "static", "shared", "driver"
  virtual void bind_thread() = 0;           // make the device's context current on this thread
  virtual Stream create_stream(bool non_blocking) = 0;
  virtual void destroy_stream(Stream stream) = 0;
  virtual void* allocate(std::size_t bytes) = 0;                        // cudaMalloc / cuMemAlloc
  virtual void* allocate_async(std::size_t bytes, Stream stream) = 0;   // cudaMallocAsync
  virtual void* allocate_pitch(std::size_t width, std::size_t height, std::size_t* pitch) = 0;
  virtual void free(void* block) = 0;                                   // cudaFree / cuMemFree
  virtual void free_async(void* block, Stream stream) = 0;
  // Makes `waiter` wait for the work issued so far on `signaller` (event record + stream wait).
  virtual void order_after(Stream waiter, Stream signaller) = 0;
  virtual void synchronize(Stream stream) = 0;
  virtual void synchronize_device() = 0;
  virtual void fill(void* block, std::uint64_t bytes, std::uint32_t tag, Stream stream) = 0;
  virtual void verify(const void* block, std::uint64_t bytes, std::uint32_t tag,
                      unsigned long long* mismatches, Stream stream) = 0;
  virtual void spin_verify(const void* block, std::uint64_t bytes, std::uint32_t tag,
                           std::uint32_t duration_us, unsigned long long* mismatches, Stream stream) = 0;
  // A zeroed device counter for verify(); read back synchronously; released with free().
  virtual unsigned long long* new_counter() = 0;
  virtual unsigned long long read_counter(const unsigned long long* counter) = 0;
};

struct Options {
  int threads = 8;
  double seconds = 3.0;                      // wall-clock bound of the random phase
  std::uint64_t iterations = 0;              // per-thread bound on operations; 0 = only `seconds`
  std::uint64_t max_size = 256ull << 20;     // largest random block ("hundreds of MiB")
  std::uint64_t budget = 2ull << 30;         // live bytes of all threads together stay under this
  std::uint32_t spin_us = 2000;              // how long the long reader of a race keeps reading
  int race_every = 16;                       // one free-safety race every this many operations
  int max_races = 12;                        // per thread
  std::uint64_t seed = 42;
};

struct Result {
  std::uint64_t blocks = 0;          // allocations made (every kind)
  std::uint64_t bytes = 0;           // bytes of those allocations
  std::uint64_t mismatches = 0;      // words that did not hold their pattern when verified
  std::uint64_t misaligned = 0;      // pointers (or pitches) not 256-byte aligned / pitch < width
  std::uint64_t races = 0;           // free-safety races run
  std::uint64_t races_same_address = 0;  // races whose new block got the freed block's address
  std::uint64_t by_kind[3] = {0, 0, 0};  // sync, async, pitch allocations
  std::uint64_t frees_sync = 0, frees_async = 0, frees_cross_stream = 0;
  bool passed() const { return mismatches == 0 && misaligned == 0 && blocks > 0; }
};

// Parses argv into options; on a bad argument prints usage and returns false.
bool parse_options(int argc, char** argv, Options* options);

// Runs the workload on `device` with options.threads host threads.
Result run(Device& device, const Options& options);

// Prints the details and the one result line; returns the process exit code (0 pass, 1 fail).
int report(const std::string& variant, const Result& result);

// Reports a failed CUDA call (file:line, call, error name and text) and ends the process (exit code 2).
[[noreturn]] void fail(const char* call, const char* error_name, const char* error_text, const char* file,
                       int line);

}  // namespace torture
