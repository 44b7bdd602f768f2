// GPUSHIM_FAIL: the syntax (config/fault_spec.h) and the decision (router/fault_injection.h), on the CPU.
// The end-to-end behaviour in libgpushim.so is tests/router_oom_end_to_end_test.cpp.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "config/fault_spec.h"
#include "config/settings.h"
#include "router/fault_injection.h"

namespace gpushim {
namespace {

constexpr std::uint64_t MiB = 1ull << 20;

FaultSpec parsed(const char* text) {
  FaultSpec spec;
  EXPECT_TRUE(parse_fault_spec(text, &spec)) << text;
  return spec;
}

TEST(FaultSpecSyntax, AcceptsEachConditionAndCombinations) {
  EXPECT_EQ(parsed("nth=5").nth, 5u);
  EXPECT_EQ(parsed("every=100").every, 100u);
  EXPECT_EQ(parsed("size>=1GiB").min_bytes, 1024 * MiB);
  EXPECT_EQ(parsed("size>=64k").min_bytes, 64u * 1024);
  EXPECT_EQ(parsed("after=500ms").after_ns, 500'000'000u);
  EXPECT_EQ(parsed("after=1.5s").after_ns, 1'500'000'000u);
  EXPECT_EQ(parsed("after=2").after_ns, 2'000'000'000u);
  EXPECT_EQ(parsed("after=3m").after_ns, 180'000'000'000u);
  EXPECT_EQ(parsed("after=100us").after_ns, 100'000u);
  const FaultSpec both = parsed("size>=256MiB, nth=2");
  EXPECT_TRUE(both.armed);
  EXPECT_EQ(both.min_bytes, 256 * MiB);
  EXPECT_EQ(both.nth, 2u);
  const FaultSpec three = parsed("after=10s,every=50,size>=1MiB");
  EXPECT_EQ(three.after_ns, 10'000'000'000u);
  EXPECT_EQ(three.every, 50u);
  EXPECT_EQ(three.min_bytes, MiB);
}

TEST(FaultSpecSyntax, RejectsWhatItCannotMean) {
  for (const char* bad : {"", ",", "nth", "nth=", "nth=0", "nth=-1", "nth=1.5", "every=0", "nth=2,every=3",
                          "nth=1,nth=2", "size>=", "size>=0", "size>=lots", "size>1MiB", "after=", "after=5x",
                          "after=-1s", "sometimes", "nth=1,", "NTH=1", "nth=99999999999999999999"}) {
    FaultSpec spec;
    spec.nth = 777;
    EXPECT_FALSE(parse_fault_spec(bad, &spec)) << bad;
    EXPECT_EQ(spec.nth, 777u) << "a rejected value leaves the spec untouched: " << bad;
  }
}

TEST(FaultSpecSyntax, TheSettingsTableCarriesIt) {
  EXPECT_EQ(setting_value_rejected_by("GPUSHIM_FAIL", "nth=3"), nullptr);
  const SettingRow* row = setting_value_rejected_by("GPUSHIM_FAIL", "nth=0");
  ASSERT_NE(row, nullptr);
  EXPECT_NE(std::string(row->accepted).find("nth=N"), std::string::npos);
  struct Env {
    static const char* lookup(const char* name, void* user) {
      return std::string(name) == "GPUSHIM_FAIL" ? static_cast<const char*>(user) : nullptr;
    }
  };
  char good[] = "every=4";
  Settings s = parse_settings(&Env::lookup, good);
  EXPECT_TRUE(s.errors.empty());
  EXPECT_TRUE(s.fail.armed);
  EXPECT_EQ(s.fail.every, 4u);
  char bad[] = "every=four";
  Settings b = parse_settings(&Env::lookup, bad);
  ASSERT_EQ(b.errors.size(), 1u);
  EXPECT_EQ(b.errors[0].find("GPUSHIM_FAIL=every=four is not valid; accepted: "), 0u) << b.errors[0];
  EXPECT_FALSE(b.fail.armed);
  EXPECT_EQ(b.backend, "passthrough");
}

std::vector<int> failures(FaultInjector& injector, const std::vector<std::uint64_t>& sizes, std::uint64_t now = 0) {
  std::vector<int> out;
  for (std::uint64_t s : sizes) out.push_back(injector.should_fail(s, now) ? 1 : 0);
  return out;
}

TEST(FaultInjector, NthFailsOnlyThatOne) {
  FaultInjector injector(parsed("nth=3"), 0);
  EXPECT_EQ(failures(injector, {1, 1, 1, 1, 1, 1}), (std::vector<int>{0, 0, 1, 0, 0, 0}));
  EXPECT_EQ(injector.injected(), 1u);
  EXPECT_EQ(injector.matched(), 6u);
}

TEST(FaultInjector, EveryFailsEachNth) {
  FaultInjector injector(parsed("every=2"), 0);
  EXPECT_EQ(failures(injector, {1, 1, 1, 1, 1}), (std::vector<int>{0, 1, 0, 1, 0}));
  EXPECT_EQ(injector.injected(), 2u);
}

TEST(FaultInjector, SizeFiltersBeforeCounting) {
  FaultInjector injector(parsed("size>=1MiB,nth=2"), 0);
  EXPECT_EQ(failures(injector, {4096, MiB, 4096, 512 * 1024, 2 * MiB, MiB}), (std::vector<int>{0, 0, 0, 0, 1, 0}));
  EXPECT_EQ(injector.matched(), 3u);
}

TEST(FaultInjector, AloneSizeFailsEveryLargeAllocation) {
  FaultInjector injector(parsed("size>=1GiB"), 0);
  EXPECT_EQ(failures(injector, {MiB, 1024 * MiB, 2048 * MiB, MiB}), (std::vector<int>{0, 1, 1, 0}));
}

TEST(FaultInjector, AfterCountsFromTheStart) {
  const std::uint64_t start = 5'000'000'000ull;
  FaultInjector injector(parsed("after=2s,nth=1"), start);
  EXPECT_FALSE(injector.should_fail(1, start));
  EXPECT_FALSE(injector.should_fail(1, start + 1'999'999'999ull));
  EXPECT_EQ(injector.matched(), 0u) << "allocations before the time are not counted";
  EXPECT_TRUE(injector.should_fail(1, start + 2'000'000'000ull));
  EXPECT_FALSE(injector.should_fail(1, start + 3'000'000'000ull));
}

TEST(FaultInjector, UnarmedNeverFails) {
  FaultInjector injector;
  EXPECT_EQ(failures(injector, {1, MiB, 1ull << 40}), (std::vector<int>{0, 0, 0}));
}

TEST(FaultInjector, ConcurrentCallersFailExactlyTheChosenCount) {
  FaultInjector injector(parsed("every=10"), 0);
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) failed += injector.should_fail(1, 0) ? 1 : 0;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 800);
  EXPECT_EQ(injector.injected(), 800u);
}

}  // namespace
}  // namespace gpushim
