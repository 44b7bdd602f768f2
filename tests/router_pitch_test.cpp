#include "router/pitch.h"
#include "allocators/block_alignment.h"

#include <gtest/gtest.h>

namespace gpushim {
namespace {

TEST(Pitch, ValidatesLikeTheDriver) {
  EXPECT_TRUE(valid_pitch_request(100, 10, 4));
  EXPECT_TRUE(valid_pitch_request(100, 10, 8));
  EXPECT_TRUE(valid_pitch_request(100, 10, 16));
  EXPECT_FALSE(valid_pitch_request(100, 10, 1));
  EXPECT_FALSE(valid_pitch_request(100, 10, 2));
  EXPECT_FALSE(valid_pitch_request(100, 10, 32));
  EXPECT_FALSE(valid_pitch_request(0, 10, 4));
  EXPECT_FALSE(valid_pitch_request(100, 0, 4));
}

TEST(Pitch, AlignmentIsAtLeast512) {
  EXPECT_EQ(pitch_alignment(32), 512u);   // what the H100 reports
  EXPECT_EQ(pitch_alignment(0), 512u);    // attribute unavailable
  EXPECT_EQ(pitch_alignment(-1), 512u);
  EXPECT_EQ(pitch_alignment(1024), 1024u);
}

TEST(Pitch, RowsRoundUpAndTotalsMultiply) {
  std::size_t pitch = 0, total = 0;
  ASSERT_TRUE(pitched_size(1, 3, 512, &pitch, &total));
  EXPECT_EQ(pitch, 512u);
  EXPECT_EQ(total, 1536u);
  ASSERT_TRUE(pitched_size(512, 2, 512, &pitch, &total));
  EXPECT_EQ(pitch, 512u);
  ASSERT_TRUE(pitched_size(513, 2, 512, &pitch, &total));
  EXPECT_EQ(pitch, 1024u);
  EXPECT_EQ(total, 2048u);
}

TEST(Pitch, OverflowIsRefused) {
  std::size_t pitch = 0, total = 0;
  EXPECT_FALSE(pitched_size(SIZE_MAX - 10, 1, 512, &pitch, &total));
  EXPECT_FALSE(pitched_size(std::size_t{1} << 40, std::size_t{1} << 30, 512, &pitch, &total));
}

// Blocks must meet the device's texture alignment (allocators/block_alignment.h): the attribute when the
// driver gives one, the H100's 512 B when it does not; a device asking for more than the provider
// backends give is served by passthrough.
TEST(BlockAlignment, TextureAlignmentComesFromTheAttributeWithANamedFallback) {
  EXPECT_EQ(texture_alignment(512), 512u);
  EXPECT_EQ(texture_alignment(256), 256u);
  EXPECT_EQ(texture_alignment(0), kTextureAlignmentFallback);
  EXPECT_EQ(texture_alignment(-1), kTextureAlignmentFallback);
  EXPECT_EQ(kTextureAlignmentFallback, 512u);
}

TEST(BlockAlignment, ProviderBlocksMeetTheH100ButNotALargerAlignment) {
  EXPECT_TRUE(provider_blocks_meet(512));
  EXPECT_TRUE(provider_blocks_meet(256));
  EXPECT_FALSE(provider_blocks_meet(1024));
  EXPECT_FALSE(provider_blocks_meet(0));
}

}  // namespace
}  // namespace gpushim
