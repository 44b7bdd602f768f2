// A fuzzer-style corpus of damaged traces: every truncation of a small trace, random byte flips, wrong
// magic, a newer version, an empty file. Each must give exit code 2 and a message with a byte offset,
// or (a cut exactly after a chunk: what a kill leaves) read cleanly. Never a crash.
#include <gtest/gtest.h>

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
    if (boundaries_.count(cut)) {
      EXPECT_EQ(code, 0) << "a cut after a whole chunk is a killed recording, readable: " << cut << " " << err;
      EXPECT_NE(err.find("cut short"), std::string::npos) << err;
    } else {
      ASSERT_EQ(code, kExitBadTrace) << "cut at " << cut;
      ASSERT_NE(err.find("byte offset"), std::string::npos) << err;
    }
  }
}

TEST_F(DamagedTrace, RandomByteFlipsAfterTheHeader) {
  std::mt19937 rng(12345);
  for (int i = 0; i < 2000; ++i) {
    std::vector<unsigned char> bytes = good_;
    std::size_t at = sizeof(format::FileHeader) +
                     rng() % (bytes.size() - sizeof(format::FileHeader));
    bytes[at] ^= std::uint8_t(1u << (rng() % 8));
    std::string err;
    ASSERT_EQ(summarize_bytes(bytes, &err), kExitBadTrace) << "flip at " << at;
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
  EXPECT_NE(err.find("byte offset 8: trace format version 2 is newer"), std::string::npos) << err;

  EXPECT_EQ(summarize_bytes({}, &err), kExitBadTrace);
  EXPECT_NE(err.find("byte offset 0: the file is empty"), std::string::npos) << err;

  std::ostringstream out, errors;
  EXPECT_EQ(run_trace_summary(dir_ + "/does-not-exist.trace", 5, {out, errors, false}), kExitBadTrace);
}

// The committed corpus (tests/data/damaged_*.trace): each file is unreadable with exit code 2.
TEST_F(DamagedTrace, CommittedCorpus) {
  int files = 0;
  for (const char* name : {"damaged_empty.trace", "damaged_wrong_magic.trace", "damaged_newer_version.trace",
                           "damaged_truncated_chunk.trace", "damaged_flipped_payload.trace"}) {
    std::string path = std::string(GPUSHIM_TEST_DATA_DIR) + "/" + name;
    if (access(path.c_str(), R_OK) != 0) continue;
    ++files;
    std::ostringstream out, errors;
    EXPECT_EQ(run_trace_summary(path, 5, {out, errors, false}), kExitBadTrace) << name;
    EXPECT_NE(errors.str().find("byte offset"), std::string::npos) << errors.str();
  }
  EXPECT_EQ(files, 5) << "tests/data is missing part of the damaged-trace corpus";
}


}  // namespace
}  // namespace gpushim::tracing
