// The gpushim IPC handle: round trip, and every way a handle that is not ours is refused (so the shim
// passes it to the driver instead of misreading it).
#include <cstring>
#include <random>

#include <gtest/gtest.h>

#include "ipc/ipc_handle.h"

using gpushim::ipc::HandleFields;

namespace {

HandleFields sample() {
  HandleFields fields;
  fields.exporter_pid = 4242;
  fields.exporter_token = 0x0123456789abcdefull;
  fields.export_id = 17;
  fields.offset_in_span = 3 * 256;
  fields.block_size = (5u << 20) + 3;
  fields.device = 1;
  return fields;
}

}  // namespace

TEST(IpcHandle, RoundTripKeepsEveryField) {
  const HandleFields in = sample();
  HandleFields out;
  ASSERT_TRUE(gpushim::ipc::decode_handle(gpushim::ipc::encode_handle(in), &out));
  EXPECT_EQ(out.exporter_pid, in.exporter_pid);
  EXPECT_EQ(out.exporter_token, in.exporter_token);
  EXPECT_EQ(out.export_id, in.export_id);
  EXPECT_EQ(out.offset_in_span, in.offset_in_span);
  EXPECT_EQ(out.block_size, in.block_size);
  EXPECT_EQ(out.device, in.device);
}

TEST(IpcHandle, LayoutIsFixed) {
  // Two processes built from the same version must agree byte for byte: magic first, pid at 12.
  const CUipcMemHandle handle = gpushim::ipc::encode_handle(sample());
  const unsigned char* b = reinterpret_cast<const unsigned char*>(handle.reserved);
  EXPECT_EQ(b[0], 0xFF);
  EXPECT_EQ(std::memcmp(b + 1, "gpushm", 6), 0);
  EXPECT_EQ(b[12] | (b[13] << 8), 4242);
  EXPECT_EQ(b[24], 17);
}

TEST(IpcHandle, EveryFlippedByteIsRejected) {
  const CUipcMemHandle good = gpushim::ipc::encode_handle(sample());
  for (int i = 0; i < 64; ++i) {
    CUipcMemHandle bad = good;
    bad.reserved[i] = static_cast<char>(bad.reserved[i] ^ 0x5a);
    EXPECT_FALSE(gpushim::ipc::decode_handle(bad, nullptr)) << "byte " << i;
  }
}

TEST(IpcHandle, ForeignHandlesAreRejected) {
  CUipcMemHandle zero;
  std::memset(&zero, 0, sizeof zero);
  EXPECT_FALSE(gpushim::ipc::decode_handle(zero, nullptr));
  EXPECT_FALSE(gpushim::ipc::has_gpushim_magic(zero));

  std::mt19937_64 random(7);
  for (int trial = 0; trial < 10000; ++trial) {
    CUipcMemHandle noise;
    for (auto& byte : noise.reserved) byte = static_cast<char>(random());
    EXPECT_FALSE(gpushim::ipc::decode_handle(noise, nullptr));
  }
  // Random bytes behind our magic: the checksum still refuses them.
  for (int trial = 0; trial < 10000; ++trial) {
    CUipcMemHandle forged = gpushim::ipc::encode_handle(sample());
    for (int i = 8; i < 64; ++i) forged.reserved[i] = static_cast<char>(random());
    EXPECT_TRUE(gpushim::ipc::has_gpushim_magic(forged));
    EXPECT_FALSE(gpushim::ipc::decode_handle(forged, nullptr));
  }
}

TEST(IpcHandle, ZeroPidOrIdIsRejected) {
  HandleFields fields = sample();
  fields.exporter_pid = 0;
  EXPECT_FALSE(gpushim::ipc::decode_handle(gpushim::ipc::encode_handle(fields), nullptr));
  fields = sample();
  fields.export_id = 0;
  EXPECT_FALSE(gpushim::ipc::decode_handle(gpushim::ipc::encode_handle(fields), nullptr));
}
