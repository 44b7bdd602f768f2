// The CUDA virtual memory management steps of the CUDA provider (providers/cuda_peer_provider.h),
// apart from its policy of which device backs what and who is told about it: how physical memory is
// created, mapped, made accessible and given back. Each call costs 1-300 us on the H100 (cuMemSetAccess
// 30-54 us whatever the size), so none of them is on the hot path.
// Calls the real driver only (driver/real_driver.h), never gpushim's hooks.
#pragma once

#include <cstddef>

#include <cuda.h>

namespace gpushim {

// The H100's granularity, used only if the driver cannot tell us.
inline constexpr std::size_t kFallbackVmmGranularity = std::size_t{2} << 20;

// Pinned memory on `device`, with no shareable handle asked for.
CUmemAllocationProp pinned_memory_on(int device) noexcept;

// Read and write access from `device`, for cuMemSetAccess.
CUmemAccessDesc read_write_access_from(int device) noexcept;

// cuMemGetAllocationGranularity(MINIMUM) for memory made with `prop`; its CUresult.
CUresult minimum_granularity(const CUmemAllocationProp& prop, std::size_t* granularity) noexcept;

// cuMemAddressReserve of `bytes` aligned to `alignment`; nullptr on failure (logged for `device`).
void* reserve_address_space(int device, std::size_t bytes, std::size_t alignment) noexcept;
// cuMemAddressFree of a reservation; nothing for nullptr.
void free_address_space(void* base, std::size_t bytes) noexcept;

enum class MapResult { mapped, out_of_memory, failed };

// cuMemCreate of `bytes` with `*prop` (on the device prop->location names), then cuMemMap of all of it
// at `at`; `*handle` holds the physical memory when mapped. Access is not set: a caller that maps
// several pieces sets it once over all of them. out_of_memory only when cuMemCreate says so (not
// logged: the caller turns it into a miss or tries another device); any other failure is logged and
// leaves nothing behind.
// A shareable handle type in `*prop` that the driver refuses is dropped from `*prop` for good (logged
// once), so memory is still had, only not exportable.
MapResult create_and_map(CUdeviceptr at, std::size_t bytes, CUmemAllocationProp* prop,
                         CUmemGenericAllocationHandle* handle) noexcept;

// One cuMemSetAccess over [at, at+bytes) with `count` descriptors (30-54 us whatever the size, so once
// per mapped range). False on failure, logged for `device`.
bool set_access(CUdeviceptr at, std::size_t bytes, const CUmemAccessDesc* access, std::size_t count,
                int device) noexcept;

// cuMemUnmap, then cuMemRelease: the physical memory is freed once it is unmapped and released (the
// handle is the last reference). IPC hears of every release in between, so a descriptor exported for
// the memory never outlives it (one relaxed load when nothing was ever exported).
// cuMemUnmap does not wait for the GPU: call wait_for_device_work() first for memory the program used.
void unmap_and_release(CUdeviceptr at, std::size_t bytes, CUmemGenericAllocationHandle handle) noexcept;

// cuCtxSynchronize on `context`, pushed for the call when another context is current; on the calling
// thread's current context when `context` is nullptr. cuMemUnmap is not stream-ordered: work still
// queued on the memory would fault (seen on the H100 as "illegal memory access" when blocks go back at
// once under legacy-ordered reuse). Unmapping is the slow path (20-30 us, and rare above the release
// threshold), so the wait costs little.
void wait_for_device_work(CUcontext context) noexcept;

}  // namespace gpushim
