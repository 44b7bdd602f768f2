// The 64 bytes of a CUipcMemHandle that gpushim hands out for its own memory, and how to tell them
// from the driver's.
//
// The driver cannot export gpushim memory itself (cuIpcGetMemHandle on VMM-mapped memory returns
// CUDA_ERROR_INVALID_VALUE, docs/measured-facts.md), so gpushim's handle names an export kept by the exporting
// process: who exported (pid + a random per-process token, so a recycled pid is not mistaken for the
// exporter) and which export (id). The importer asks the exporter for the physical memory's file
// descriptors (ipc/export_server.h) and maps them itself.
//
// Layout (little-endian, fixed so that two gpushim builds of the same version agree):
//   [0, 8)   magic "\xFFgpushm\x01"      [8, 12)  layout version      [12, 16) exporter pid
//   [16, 24) exporter token              [24, 32) export id           [32, 40) offset of the block
//   [40, 48) block size                  [48, 52) exporter's device   [52, 56) zero
//   [56, 64) checksum of bytes [0, 56) (FNV-1a 64)
// decode() accepts only a handle whose magic, version, zero field and checksum all match, so a
// driver handle (or random bytes) is passed to the real driver, never misread as ours.
#pragma once

#include <cstdint>

#include <cuda.h>

namespace gpushim::ipc {

struct HandleFields {
  std::uint32_t exporter_pid = 0;
  std::uint64_t exporter_token = 0;
  std::uint64_t export_id = 0;
  std::uint64_t offset_in_span = 0;  // the block's start, from the start of the first mapped chunk
  std::uint64_t block_size = 0;      // the size the program asked for
  std::int32_t device = -1;          // the exporter's device ordinal (informational: ordinals differ
                                     // between processes under CUDA_VISIBLE_DEVICES)
};

constexpr std::uint32_t kHandleLayoutVersion = 1;

CUipcMemHandle encode_handle(const HandleFields& fields) noexcept;

// True (and *out filled) only for a well-formed gpushim handle.
bool decode_handle(const CUipcMemHandle& handle, HandleFields* out) noexcept;

// The cheap test the hooks make first: the magic alone (decode_handle still checks everything).
bool has_gpushim_magic(const CUipcMemHandle& handle) noexcept;

}  // namespace gpushim::ipc
