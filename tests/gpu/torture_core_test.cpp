// The alloc_torture workload on host memory, where stream work is deferred until a synchronization: the
// checks must pass on an allocator that keeps the free-safety rules, and must catch one that reuses a
// freed block at once (the naive reuse the GPU race is built to catch). Runs on the CPU, in CI.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/pattern.h"
#include "test_apps/torture/torture_core.h"

namespace {

using gpushim::kernels::pattern_byte;
using torture::Stream;

struct HostStream {
  std::deque<std::function<void()>> work;
};

// Every stream's work runs only when someone synchronizes, the later-created streams and the default
// streams first, so a writer issued after a reader on another stream runs before it: the worst order a
// GPU may pick.
class DeferredHostDevice final : public torture::Device {
 public:
  explicit DeferredHostDevice(bool naive_reuse) : naive_reuse_(naive_reuse) {}
  ~DeferredHostDevice() override {
    for (void* p : owned_) std::free(p);
  }
  std::string variant() const override { return naive_reuse_ ? "host-naive" : "host"; }
  void bind_thread() override {}
  Stream create_stream(bool) override {
    std::lock_guard<std::mutex> lock(mutex_);
    streams_.push_back(std::make_unique<HostStream>());
    return reinterpret_cast<Stream>(streams_.back().get());
  }
  void destroy_stream(Stream) override {}
  void* allocate(std::size_t bytes) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto reuse = free_blocks_.find(bytes);
    if (reuse != free_blocks_.end()) {
      void* p = reuse->second;
      free_blocks_.erase(reuse);
      return p;
    }
    void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    owned_.push_back(p);
    sizes_[p] = bytes;
    return p;
  }
  void* allocate_async(std::size_t bytes, Stream) override { return allocate(bytes); }
  void* allocate_pitch(std::size_t width, std::size_t height, std::size_t* pitch) override {
    *pitch = (width + 255) / 256 * 256;
    return allocate(*pitch * height);
  }
  void free(void* block) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!naive_reuse_) flush_all();  // cudaFree's semantics: earlier work is done before reuse
    if (sizes_.count(block) == 0) return;  // a counter from new_counter()
    free_blocks_.emplace(sizes_.at(block), block);
  }
  void free_async(void* block, Stream stream) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (naive_reuse_) {
      free_blocks_.emplace(sizes_.at(block), block);
    } else {
      queue(stream).work.push_back([this, block]() { free_blocks_.emplace(sizes_.at(block), block); });
    }
  }
  void order_after(Stream, Stream signaller) override {
    std::lock_guard<std::mutex> lock(mutex_);
    flush(queue(signaller));
  }
  void synchronize(Stream) override {
    std::lock_guard<std::mutex> lock(mutex_);
    flush_all();
  }
  void synchronize_device() override { synchronize(nullptr); }
  void fill(void* block, std::uint64_t bytes, std::uint32_t tag, Stream stream) override {
    enqueue(stream, [block, bytes, tag]() {
      auto* p = static_cast<std::uint8_t*>(block);
      for (std::uint64_t i = 0; i < bytes; ++i) p[i] = pattern_byte(tag, i);
    });
  }
  void verify(const void* block, std::uint64_t bytes, std::uint32_t tag, unsigned long long* mismatches,
              Stream stream) override {
    enqueue(stream, [block, bytes, tag, mismatches]() {
      const auto* p = static_cast<const std::uint8_t*>(block);
      for (std::uint64_t i = 0; i < bytes; ++i) *mismatches += p[i] != pattern_byte(tag, i);
    });
  }
  void spin_verify(const void* block, std::uint64_t bytes, std::uint32_t tag, std::uint32_t,
                   unsigned long long* mismatches, Stream stream) override {
    verify(block, bytes, tag, mismatches, stream);
  }
  unsigned long long* new_counter() override {
    std::lock_guard<std::mutex> lock(mutex_);
    counters_.push_back(std::make_unique<unsigned long long>(0));
    return counters_.back().get();
  }
  unsigned long long read_counter(const unsigned long long* counter) override {
    std::lock_guard<std::mutex> lock(mutex_);
    flush_all();
    return *counter;
  }

 private:
  HostStream& queue(Stream stream) {
    if (stream == torture::legacy_default_stream()) return legacy_;
    if (stream == torture::per_thread_default_stream()) return per_thread_;
    return *reinterpret_cast<HostStream*>(stream);
  }
  void enqueue(Stream stream, std::function<void()> work) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue(stream).work.push_back(std::move(work));
  }
  static void flush(HostStream& s) {
    while (!s.work.empty()) {
      auto work = std::move(s.work.front());
      s.work.pop_front();
      work();
    }
  }
  void flush_all() {
    flush(legacy_);
    flush(per_thread_);
    for (auto it = streams_.rbegin(); it != streams_.rend(); ++it) flush(**it);
  }

  const bool naive_reuse_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<HostStream>> streams_;
  HostStream legacy_, per_thread_;
  std::multimap<std::size_t, void*> free_blocks_;
  std::map<void*, std::size_t> sizes_;
  std::vector<void*> owned_;
  std::vector<std::unique_ptr<unsigned long long>> counters_;
};

torture::Options small_options() {
  torture::Options o;
  o.threads = 1;
  o.seconds = 30;
  o.max_size = 64 << 10;
  o.budget = 16 << 20;
  o.seed = 3;
  return o;
}

TEST(TortureCore, PassesOnAnAllocatorThatKeepsTheFreeSafetyRules) {
  DeferredHostDevice device(/*naive_reuse=*/false);
  torture::Options o = small_options();
  o.threads = 4;
  o.iterations = 400;
  const torture::Result r = torture::run(device, o);
  EXPECT_TRUE(r.passed());
  EXPECT_EQ(r.mismatches, 0u);
  EXPECT_GT(r.blocks, 400u);
  EXPECT_GT(r.races, 0u);
  EXPECT_GT(r.by_kind[0], 0u);
  EXPECT_GT(r.by_kind[1], 0u);
  EXPECT_GT(r.by_kind[2], 0u);
  EXPECT_GT(r.frees_cross_stream, 0u);
}

TEST(TortureCore, TheRaceCatchesImmediateReuseOfAFreedBlock) {
  DeferredHostDevice device(/*naive_reuse=*/true);
  torture::Options o = small_options();
  o.race_every = 1;  // every operation is a race
  o.max_races = 6;
  o.iterations = 6;
  const torture::Result r = torture::run(device, o);
  EXPECT_EQ(r.races, 6u);
  EXPECT_GT(r.races_same_address, 0u);
  EXPECT_GT(r.mismatches, 0u);
  EXPECT_FALSE(r.passed());
}

TEST(TortureCore, ParsesSizesWithSuffixes) {
  const char* argv[] = {"alloc_torture", "--max-size", "16M", "--budget", "1GiB", "--threads", "3"};
  torture::Options o;
  ASSERT_TRUE(torture::parse_options(7, const_cast<char**>(argv), &o));
  EXPECT_EQ(o.max_size, 16ull << 20);
  EXPECT_EQ(o.budget, 1ull << 30);
  EXPECT_EQ(o.threads, 3);
}

TEST(TortureCore, PatternDiffersBetweenTagsAndOffsets) {
  int same = 0;
  for (std::uint64_t i = 0; i < 4096; ++i)
    same += gpushim::kernels::pattern_word(1, i) == gpushim::kernels::pattern_word(2, i);
  EXPECT_LT(same, 2);
  EXPECT_NE(gpushim::kernels::pattern_word(1, 0), gpushim::kernels::pattern_word(1, 1));
}

// Sizes on the command line mean what they mean in GPUSHIM_ variables: "2GB" is 2,000,000,000 bytes,
// "2GiB" and "2G" are 2^31 (the hand parser this replaced read "2GB" as 2^31).
torture::Options parsed(std::vector<std::string> words, bool* ok) {
  words.insert(words.begin(), "alloc_torture");
  std::vector<char*> argv;
  for (std::string& word : words) argv.push_back(word.data());
  torture::Options options;
  *ok = torture::parse_options(static_cast<int>(argv.size()), argv.data(), &options);
  return options;
}

TEST(TortureOptions, SizesAreReadAsTheSettingsReadThem) {
  bool ok = false;
  EXPECT_EQ(parsed({"--max-size", "2GB"}, &ok).max_size, 2000000000ull);
  EXPECT_TRUE(ok);
  EXPECT_EQ(parsed({"--budget", "2GiB"}, &ok).budget, 2ull << 30);
  EXPECT_EQ(parsed({"--budget", "2G"}, &ok).budget, 2ull << 30);
  EXPECT_EQ(parsed({"--max-size", "64K", "--threads", "3"}, &ok).max_size, 64ull << 10);
  EXPECT_TRUE(ok);
}

TEST(TortureOptions, BadValuesAreRefused) {
  bool ok = true;
  parsed({"--max-size", "4X"}, &ok);
  EXPECT_FALSE(ok);
  parsed({"--threads", "0"}, &ok);
  EXPECT_FALSE(ok);
  parsed({"--no-such-option"}, &ok);
  EXPECT_FALSE(ok);
}

}  // namespace
