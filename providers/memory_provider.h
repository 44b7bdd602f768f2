// Where backends get memory: address space, and physical memory mapped into it (mimalloc's prim
// layer). Two kinds: CudaPeerProvider (cuMemAddressReserve/cuMemCreate/cuMemMap/
// cuMemSetAccess on one device or several) and HostProvider (mmap/mprotect), so the algorithms in allocators/
// are tested on the CPU with exactly the code that runs on the GPU.
#pragma once

#include <cstddef>

namespace gpushim {

class MemoryProvider {
 public:
  virtual ~MemoryProvider() = default;

  // map()/unmap() sizes and addresses are multiples of this (2 MiB on the H100).
  virtual std::size_t granularity() const noexcept = 0;

  // Reserves address space only (no physical memory). nullptr on failure.
  virtual void* reserve(std::size_t bytes) noexcept = 0;
  virtual void release_reservation(void* base, std::size_t bytes) noexcept = 0;

  // Backs [addr, addr+bytes) inside a reservation with physical memory, readable and writable by the
  // device (host). Returns false when the physical memory cannot be had (out of memory).
  virtual bool map(void* addr, std::size_t bytes) noexcept = 0;

  // Gives back a range exactly as an earlier map() call mapped it.
  virtual void unmap(void* addr, std::size_t bytes) noexcept = 0;

  // Bytes currently mapped through this provider.
  virtual std::size_t bytes_mapped() const noexcept = 0;
};

// A decorator's base: every call goes to `inner`, which must outlive it; a decorator overrides what it
// changes (LimitedProvider the mapping against a cap, MappingStatisticsProvider the counting).
class ForwardingProvider : public MemoryProvider {
 public:
  explicit ForwardingProvider(MemoryProvider& inner) noexcept : inner_(inner) {}

  std::size_t granularity() const noexcept override { return inner_.granularity(); }
  void* reserve(std::size_t bytes) noexcept override { return inner_.reserve(bytes); }
  void release_reservation(void* base, std::size_t bytes) noexcept override { inner_.release_reservation(base, bytes); }
  bool map(void* addr, std::size_t bytes) noexcept override { return inner_.map(addr, bytes); }
  void unmap(void* addr, std::size_t bytes) noexcept override { inner_.unmap(addr, bytes); }
  std::size_t bytes_mapped() const noexcept override { return inner_.bytes_mapped(); }

  MemoryProvider& inner() const noexcept { return inner_; }

 protected:
  MemoryProvider& inner_;
};

}  // namespace gpushim
