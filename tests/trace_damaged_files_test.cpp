// A fuzzer-style corpus of damaged traces: every truncation of a small trace, random byte flips, wrong
// magic, a newer version, an empty file. Each must give exit code 2 and a message with a byte offset,
// or read what came before the damage: a cut exactly after a chunk (what a kill leaves) reads cleanly,
// a cut inside a chunk (a half-copied file) reads the chunks before it with a warning. Never a crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <random>
#include <set>
#include <sstream>

#include "tests/trace_test_support.h"
#include "analysis/trace_reader.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

using namespace testing;

class DamagedTrace : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir();
    ASSERT_TRUE(write_synthetic_trace(dir_ + "/good.trace", 4));
    good_ = read_bytes(dir_ + "/good.trace");
    // Chunk boundaries: where a kill may legitimately cut the file.
    std::size_t at = sizeof(format::FileHeader);
    boundaries_.insert(at);
    while (at + sizeof(format::ChunkHeader) <= good_.size()) {
      format::ChunkHeader h;
      std::memcpy(&h, good_.data() + at, sizeof h);
      at += sizeof h + h.payload_bytes;
      boundaries_.insert(at);
    }
    ASSERT_EQ(at, good_.size());
  }
  // Runs the summary command on `bytes` and returns its exit code; `err` gets the message.
  int summarize_bytes(const std::vector<unsigned char>& bytes, std::string* err) {
    write_bytes(dir_ + "/damaged.trace", bytes);
    std::ostringstream out, errors;
    int code = run_trace_summary(dir_ + "/damaged.trace", 5, {out, errors, false});
    *err = errors.str();
    return code;
  }
  std::string dir_;
  std::vector<unsigned char> good_;
  std::set<std::size_t> boundaries_;
};

TEST_F(DamagedTrace, EveryTruncation) {
  for (std::size_t cut = 0; cut < good_.size(); ++cut) {
    std::vector<unsigned char> bytes(good_.begin(), good_.begin() + cut);
    std::string err;
    int code = summarize_bytes(bytes, &err);
    if (cut < sizeof(format::FileHeader)) {
      ASSERT_EQ(code, kExitBadTrace) << "cut at " << cut;
      ASSERT_NE(err.find("byte offset"), std::string::npos) << err;
      continue;
    }
    ASSERT_EQ(code, 0) << "cut at " << cut << ": " << err;
    if (boundaries_.count(cut)) {
      EXPECT_NE(err.find("cut short"), std::string::npos) << "a cut after a whole chunk is a killed recording " << err;
      continue;
    }
    // A cut inside a chunk: the events of every whole chunk before it, and a warning naming the chunk.
    std::size_t last_whole = *std::prev(boundaries_.upper_bound(cut));
    EXPECT_NE(err.find("cut short inside a chunk at byte offset " + std::to_string(last_whole)), std::string::npos)
        << err;
    Trace prefix, damaged;
    TraceError error;
    ASSERT_TRUE(parse_trace(good_.data(), last_whole, &prefix, &error)) << error.message;
    ASSERT_TRUE(parse_trace(bytes.data(), bytes.size(), &damaged, &error)) << error.message;
    EXPECT_TRUE(damaged.truncated);
    EXPECT_EQ(damaged.truncated_at, last_whole);
    EXPECT_EQ(damaged.events.size(), prefix.events.size()) << "cut at " << cut;
  }
}

TEST_F(DamagedTrace, RandomByteFlipsAfterTheHeader) {
  // The size field of the last chunk is the one place a flip looks like a cut: nothing follows it.
  const std::size_t last_chunk = *std::prev(std::prev(boundaries_.end()));
  std::mt19937 rng(12345);
  for (int i = 0; i < 2000; ++i) {
    std::vector<unsigned char> bytes = good_;
    std::size_t at = sizeof(format::FileHeader) +
                     rng() % (bytes.size() - sizeof(format::FileHeader));
    bytes[at] ^= std::uint8_t(1u << (rng() % 8));
    std::string err;
    int code = summarize_bytes(bytes, &err);
    if (code == 0 && at >= last_chunk + 4 && at < last_chunk + 8) {
      ASSERT_NE(err.find("cut short inside a chunk"), std::string::npos) << err;
      continue;
    }
    ASSERT_EQ(code, kExitBadTrace) << "flip at " << at;
    ASSERT_NE(err.find("byte offset"), std::string::npos) << err;
  }
}

// Version 2 covers the header with a checksum: every single-bit flip in its 64 bytes is refused.
TEST_F(DamagedTrace, EveryHeaderBitFlipIsRefused) {
  for (std::size_t at = 0; at < sizeof(format::FileHeader); ++at)
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<unsigned char> bytes = good_;
      bytes[at] ^= std::uint8_t(1u << bit);
      std::string err;
      ASSERT_EQ(summarize_bytes(bytes, &err), kExitBadTrace) << "flip of bit " << bit << " at " << at;
      ASSERT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
      ASSERT_NE(err.find("byte offset"), std::string::npos) << err;
    }
}

TEST_F(DamagedTrace, FlipsInTheHeaderNeverCrash) {
  for (std::size_t at = 0; at < sizeof(format::FileHeader); ++at)
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<unsigned char> bytes = good_;
      bytes[at] ^= std::uint8_t(1u << bit);
      std::string err;
      int code = summarize_bytes(bytes, &err);
      ASSERT_TRUE(code == 0 || code == kExitBadTrace) << at;
      if (code == kExitBadTrace) {
        ASSERT_NE(err.find("byte offset"), std::string::npos);
      }
    }
}

TEST_F(DamagedTrace, WrongMagicNewerVersionEmpty) {
  std::string err;
  std::vector<unsigned char> bytes = good_;
  bytes[0] = 'X';
  EXPECT_EQ(summarize_bytes(bytes, &err), kExitBadTrace);
  EXPECT_NE(err.find("byte offset 0: not a gpushim trace"), std::string::npos) << err;

  bytes = good_;
  std::uint32_t newer = format::kVersion + 1;
  std::memcpy(bytes.data() + 8, &newer, 4);
  EXPECT_EQ(summarize_bytes(bytes, &err), kExitBadTrace);
  EXPECT_NE(err.find("byte offset 8: trace format version " + std::to_string(newer) + " is newer"),
            std::string::npos) << err;

  EXPECT_EQ(summarize_bytes({}, &err), kExitBadTrace);
  EXPECT_NE(err.find("byte offset 0: the file is empty"), std::string::npos) << err;

  std::ostringstream out, errors;
  EXPECT_EQ(run_trace_summary(dir_ + "/does-not-exist.trace", 5, {out, errors, false}), kExitBadTrace);
}

// The committed corpus (tests/data/damaged_*.trace, version-1 files): each damaged file is unreadable
// with exit code 2; the one cut inside a chunk reads with a warning.
TEST_F(DamagedTrace, CommittedCorpus) {
  int files = 0;
  for (const char* name : {"damaged_empty.trace", "damaged_wrong_magic.trace", "damaged_newer_version.trace",
                           "damaged_truncated_chunk.trace", "damaged_flipped_payload.trace"}) {
    std::string path = std::string(GPUSHIM_TEST_DATA_DIR) + "/" + name;
    if (access(path.c_str(), R_OK) != 0) continue;
    ++files;
    std::ostringstream out, errors;
    const bool cut = std::string(name) == "damaged_truncated_chunk.trace";
    EXPECT_EQ(run_trace_summary(path, 5, {out, errors, false}), cut ? 0 : kExitBadTrace) << name;
    EXPECT_NE(errors.str().find(cut ? "cut short inside a chunk at byte offset" : "byte offset"), std::string::npos)
        << errors.str();
  }
  EXPECT_EQ(files, 5) << "tests/data is missing part of the damaged-trace corpus";
}


}  // namespace
}  // namespace gpushim::tracing
