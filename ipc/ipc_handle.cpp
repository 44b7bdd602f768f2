#include "ipc/ipc_handle.h"

#include <cstring>

namespace gpushim::ipc {
namespace {

// 0xFF first: the handle is not text, and the rest spells who made it when dumped in hex.
constexpr unsigned char kMagic[8] = {0xFF, 'g', 'p', 'u', 's', 'h', 'm', 0x01};
constexpr std::size_t kChecksummedBytes = 56;

static_assert(sizeof(CUipcMemHandle) == 64, "CUipcMemHandle is 64 bytes (CU_IPC_HANDLE_SIZE)");

// Explicit little-endian stores, so the layout does not depend on the host's struct packing.
void put(unsigned char* at, std::uint64_t value, int bytes) noexcept {
  for (int i = 0; i < bytes; ++i) at[i] = static_cast<unsigned char>(value >> (8 * i));
}
std::uint64_t get(const unsigned char* at, int bytes) noexcept {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<std::uint64_t>(at[i]) << (8 * i);
  return value;
}

std::uint64_t fnv1a64(const unsigned char* data, std::size_t size) noexcept {
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < size; ++i) {
    hash ^= data[i];
    hash *= 0x100000001b3ull;
  }
  return hash;
}

const unsigned char* bytes_of(const CUipcMemHandle& handle) noexcept {
  return reinterpret_cast<const unsigned char*>(handle.reserved);
}

}  // namespace

CUipcMemHandle encode_handle(const HandleFields& fields) noexcept {
  CUipcMemHandle handle;
  std::memset(&handle, 0, sizeof handle);
  unsigned char* b = reinterpret_cast<unsigned char*>(handle.reserved);
  std::memcpy(b, kMagic, sizeof kMagic);
  put(b + 8, kHandleLayoutVersion, 4);
  put(b + 12, fields.exporter_pid, 4);
  put(b + 16, fields.exporter_token, 8);
  put(b + 24, fields.export_id, 8);
  put(b + 32, fields.offset_in_span, 8);
  put(b + 40, fields.block_size, 8);
  put(b + 48, static_cast<std::uint32_t>(fields.device), 4);
  put(b + 56, fnv1a64(b, kChecksummedBytes), 8);
  return handle;
}

bool has_gpushim_magic(const CUipcMemHandle& handle) noexcept {
  return std::memcmp(bytes_of(handle), kMagic, sizeof kMagic) == 0;
}

bool decode_handle(const CUipcMemHandle& handle, HandleFields* out) noexcept {
  const unsigned char* b = bytes_of(handle);
  if (!has_gpushim_magic(handle)) return false;
  if (get(b + 8, 4) != kHandleLayoutVersion) return false;
  if (get(b + 52, 4) != 0) return false;
  if (get(b + 56, 8) != fnv1a64(b, kChecksummedBytes)) return false;
  HandleFields fields;
  fields.exporter_pid = static_cast<std::uint32_t>(get(b + 12, 4));
  fields.exporter_token = get(b + 16, 8);
  fields.export_id = get(b + 24, 8);
  fields.offset_in_span = get(b + 32, 8);
  fields.block_size = get(b + 40, 8);
  fields.device = static_cast<std::int32_t>(static_cast<std::uint32_t>(get(b + 48, 4)));
  if (fields.exporter_pid == 0 || fields.export_id == 0) return false;
  if (out) *out = fields;
  return true;
}

}  // namespace gpushim::ipc
