// The settings table: every row parses its default, accepts what users write, and a bad value gives
// one line naming the variable and what it accepts, then passthrough (or exit with GPUSHIM_STRICT=1).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <initializer_list>
#include <map>
#include <set>
#include <string>

#include "allocators/backend_registry.h"
#include "config/settings.h"

namespace gpushim {
namespace {

constexpr std::uint64_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024;

using Environment = std::map<std::string, std::string>;

const char* lookup_in_map(const char* name, void* user) {
  auto* environment = static_cast<Environment*>(user);
  auto found = environment->find(name);
  return found == environment->end() ? nullptr : found->second.c_str();
}

Settings parse(Environment environment) { return parse_settings(&lookup_in_map, &environment); }

struct SizeCase {
  const char* text;  // what a user writes
  std::uint64_t bytes;
};

void expect_sizes(std::initializer_list<SizeCase> cases) {
  for (const SizeCase& c : cases) {
    std::uint64_t bytes = 0;
    EXPECT_TRUE(parse_size(c.text, &bytes)) << c.text;
    EXPECT_EQ(bytes, c.bytes) << c.text;
  }
}

TEST(ParseSize, PlainBytes) { expect_sizes({{"4096", 4096}, {"0", 0}, {"4096B", 4096}, {" 4096 ", 4096}}); }

TEST(ParseSize, BareLettersAndIecUnitsArePowersOf1024) {
  expect_sizes({{"64k", 64 * KiB}, {"64K", 64 * KiB}, {"64KiB", 64 * KiB}, {"64kib", 64 * KiB}, {"64 KiB", 64 * KiB},
                {"512MiB", 512 * MiB}, {"512M", 512 * MiB}, {"2GiB", 2 * GiB}, {"2g", 2 * GiB},
                {"1TiB", 1024 * GiB}});
}

TEST(ParseSize, UnitsWithBButNoIArePowersOf1000) {
  expect_sizes({{"64KB", 64000}, {"2GB", 2000000000}, {"3MB", 3000000}, {"1TB", 1000000000000}});
}

TEST(ParseSize, Fractions) { expect_sizes({{"1.5GiB", GiB + GiB / 2}, {"0.5k", 512}, {".25MiB", MiB / 4}}); }

TEST(ParseSize, RejectsMalformed) {
  std::uint64_t bytes = 1234;
  for (const char* text : {"", " ", "abc", "12x", "12 MiBs", "-5", "1..5G", "G", "12iB", "1e9", "99999999999TiB",
                           "5 5", "80%"}) {
    EXPECT_FALSE(parse_size(text, &bytes)) << text;
  }
  EXPECT_FALSE(parse_size(nullptr, &bytes));
  EXPECT_EQ(bytes, 1234u) << "a rejected value leaves the output alone";
}

TEST(ParseSizeOrPercent, PercentAndSizes) {
  SizeSetting setting;
  ASSERT_TRUE(parse_size_or_percent("80%", &setting));
  EXPECT_DOUBLE_EQ(setting.percent, 80.0);
  EXPECT_EQ(setting.bytes, 0u);
  EXPECT_EQ(setting.resolve(80 * GiB), 64 * GiB);
  ASSERT_TRUE(parse_size_or_percent("12.5 %", &setting));
  EXPECT_DOUBLE_EQ(setting.percent, 12.5);
  EXPECT_EQ(setting.resolve(8 * GiB), GiB);
  ASSERT_TRUE(parse_size_or_percent("40GiB", &setting));
  EXPECT_EQ(setting.percent, 0);
  EXPECT_EQ(setting.resolve(80 * GiB), 40 * GiB);
  EXPECT_TRUE(setting.set());
  for (const char* text : {"0%", "101%", "%", "80%%", "80% ", "8GiB%", "x%"})
    EXPECT_FALSE(parse_size_or_percent(text, &setting)) << text;
}

TEST(Settings, LargeSlotsParkWhileContendedUnlessTold) {
  EXPECT_EQ(parse({}).large_slots, Settings::LargeSlots::while_contended);
  EXPECT_EQ(parse({{"GPUSHIM_LARGE_SLOTS", "AUTO"}}).large_slots, Settings::LargeSlots::while_contended);
  EXPECT_EQ(parse({{"GPUSHIM_LARGE_SLOTS", "1"}}).large_slots, Settings::LargeSlots::always);
  EXPECT_EQ(parse({{"GPUSHIM_LARGE_SLOTS", "off"}}).large_slots, Settings::LargeSlots::never);
  EXPECT_FALSE(parse({{"GPUSHIM_LARGE_SLOTS", "maybe"}}).errors.empty());
}

// The free-fence rule: solo unless told otherwise (router/stream_activity.h).
TEST(Settings, FreeFenceIsAutomaticWithSoloUnlessTold) {
  EXPECT_EQ(parse({}).free_fence, Settings::FreeFence::automatic);
  EXPECT_EQ(parse({{"GPUSHIM_FREE_FENCE", "auto"}}).free_fence, Settings::FreeFence::automatic);
  EXPECT_EQ(parse({{"GPUSHIM_FREE_FENCE", "No-Solo"}}).free_fence, Settings::FreeFence::no_solo);
  EXPECT_EQ(parse({{"GPUSHIM_FREE_FENCE", "always"}}).free_fence, Settings::FreeFence::always);
  EXPECT_FALSE(parse({{"GPUSHIM_FREE_FENCE", "solo"}}).errors.empty());
}

// A time with its unit; 0 records a fence at once; more than a second is a typo, not a delay.
TEST(Settings, FenceDelayIsATime) {
  EXPECT_EQ(parse({{"GPUSHIM_FENCE_DELAY", "0"}}).fence_delay_ns, 0u);
  EXPECT_EQ(parse({{"GPUSHIM_FENCE_DELAY", "200us"}}).fence_delay_ns, 200000u);
  EXPECT_EQ(parse({{"GPUSHIM_FENCE_DELAY", "1.5ms"}}).fence_delay_ns, 1500000u);
  EXPECT_EQ(parse({{"GPUSHIM_FENCE_DELAY", "1s"}}).fence_delay_ns, 1000000000u);
  for (const char* bad : {"fast", "-1us", "2s", "10 parsecs"})
    EXPECT_FALSE(parse({{"GPUSHIM_FENCE_DELAY", bad}}).errors.empty()) << bad;
}

// The release delay: a time up to a minute; 0 gives memory above the threshold back at once.
TEST(Settings, VmmReleaseDelayIsATime) {
  EXPECT_EQ(parse({{"GPUSHIM_VMM_RELEASE_DELAY", "0"}}).vmm_release_delay_ns, 0u);
  EXPECT_EQ(parse({{"GPUSHIM_VMM_RELEASE_DELAY", "250ms"}}).vmm_release_delay_ns, 250000000u);
  EXPECT_EQ(parse({{"GPUSHIM_VMM_RELEASE_DELAY", "60s"}}).vmm_release_delay_ns, 60000000000u);
  for (const char* bad : {"soon", "-1s", "61s"})
    EXPECT_FALSE(parse({{"GPUSHIM_VMM_RELEASE_DELAY", bad}}).errors.empty()) << bad;
}

// How long a quiet stream's async free list keeps its blocks: a time up to a minute; 0 closes it at the
// next idle check.
TEST(Settings, StreamListIdleIsATime) {
  EXPECT_EQ(parse({{"GPUSHIM_STREAM_LIST_IDLE", "0"}}).stream_list_idle_ns, 0u);
  EXPECT_EQ(parse({{"GPUSHIM_STREAM_LIST_IDLE", "50ms"}}).stream_list_idle_ns, 50000000u);
  EXPECT_EQ(parse({{"GPUSHIM_STREAM_LIST_IDLE", "60s"}}).stream_list_idle_ns, 60000000000u);
  for (const char* bad : {"never", "-1s", "61s"})
    EXPECT_FALSE(parse({{"GPUSHIM_STREAM_LIST_IDLE", bad}}).errors.empty()) << bad;
}

TEST(Settings, DefaultsComeFromTheTable) {
  const Settings s = parse({});
  EXPECT_TRUE(s.errors.empty());
  EXPECT_EQ(s.backend, kDefaultBackend);
  EXPECT_FALSE(s.stats);
  EXPECT_EQ(s.log, LogLevel::warn);
  EXPECT_FALSE(s.strict);
  EXPECT_EQ(s.large_slots, Settings::LargeSlots::while_contended);
  EXPECT_EQ(s.fence_delay_ns, 200000u);
  EXPECT_EQ(s.stream_list_idle_ns, kDefaultStreamListIdleNs);
  EXPECT_TRUE(s.direct_cudart);
  EXPECT_FALSE(s.limit.set());
  EXPECT_EQ(s.vmm_reserve, 256 * GiB);
  EXPECT_EQ(s.vmm_grow_step, 8 * MiB);
  EXPECT_EQ(s.vmm_release_threshold, 8 * GiB);
  EXPECT_EQ(s.vmm_release_threshold, Settings{}.vmm_release_threshold);
  EXPECT_EQ(s.vmm_release_delay_ns, 1000000000u);
  EXPECT_EQ(s.vmm_release_delay_ns, Settings{}.vmm_release_delay_ns);
  EXPECT_EQ(s.vmm_release_threshold, 8 * GiB);
  EXPECT_EQ(s.buddy_region, GiB);
  EXPECT_EQ(s.slab_max_size, MiB);
  EXPECT_EQ(s.tiered_split, 64 * KiB);
  EXPECT_EQ(s.mempool_release_threshold, GiB);
  EXPECT_EQ(s.trace_path, "");
  EXPECT_EQ(s.trace_stack, 0);
  EXPECT_EQ(s.peers, "");
  EXPECT_EQ(s.placement, "local");
  EXPECT_FALSE(s.spill_host);
  EXPECT_DOUBLE_EQ(s.spill_limit.percent, 25.0);
}

TEST(Settings, EveryRowReadsItsVariable) {
  const Environment every_variable = {{"GPUSHIM_BACKEND", "vmm"},
                                      {"GPUSHIM_STATS", "1"},
                                      {"GPUSHIM_LOG", "debug"},
                                      {"GPUSHIM_STRICT", "yes"},
                                      {"GPUSHIM_LIMIT", "75%"},
                                      {"GPUSHIM_FREE_FENCE", "always"},
                                      {"GPUSHIM_FENCE_DELAY", "20us"},
                                      {"GPUSHIM_THREAD_FENCES", "off"},
                                      {"GPUSHIM_STREAM_LIST_IDLE", "250ms"},
                                      {"GPUSHIM_DIRECT_CUDART", "off"},
                                      {"GPUSHIM_VMM_RESERVE", "1TiB"},
                                      {"GPUSHIM_VMM_GROW_STEP", "64MiB"},
                                      {"GPUSHIM_VMM_RELEASE_THRESHOLD", "0"},
                                      {"GPUSHIM_VMM_RELEASE_DELAY", "20ms"},
                                      {"GPUSHIM_ARENA_SHARDS", "12"},
                                      {"GPUSHIM_LARGE_SLOTS", "on"},
                                      {"GPUSHIM_BUDDY_REGION", "512MiB"},
                                      {"GPUSHIM_SLAB_MAX_SIZE", "256k"},
                                      {"GPUSHIM_TIERED_SPLIT", "512KiB"},
                                      {"GPUSHIM_MEMPOOL_RELEASE_THRESHOLD", "2GB"},
                                      {"GPUSHIM_TRACE", "/tmp/run-%p.gpushim-trace.zst"},
                                      {"GPUSHIM_TRACE_STACK", "16"},
                                      {"GPUSHIM_OOM_DUMP", "/tmp/oom-%p.dump"},
                                      {"GPUSHIM_OOM_DUMP_STACK", "24"},
                                      {"GPUSHIM_FAIL", "size>=1GiB,nth=2"},
                                      {"GPUSHIM_PEERS", "0,1,3"},
                                      {"GPUSHIM_PLACEMENT", "spill"},
                                      {"GPUSHIM_SPILL", "host"},
                                      {"GPUSHIM_SPILL_LIMIT", "6GiB"}};
  const Settings s = parse(every_variable);
  EXPECT_TRUE(s.errors.empty()) << s.errors.front();
  EXPECT_EQ(s.backend, "vmm");
  EXPECT_TRUE(s.stats);
  EXPECT_EQ(s.log, LogLevel::debug);
  EXPECT_TRUE(s.strict);
  EXPECT_DOUBLE_EQ(s.limit.percent, 75.0);
  EXPECT_EQ(s.free_fence, Settings::FreeFence::always);
  EXPECT_EQ(s.fence_delay_ns, 20000u);
  EXPECT_FALSE(s.thread_fences);
  EXPECT_EQ(s.stream_list_idle_ns, 250000000u);
  EXPECT_FALSE(s.direct_cudart);
  EXPECT_EQ(s.vmm_reserve, 1024 * GiB);
  EXPECT_EQ(s.vmm_grow_step, 64 * MiB);
  EXPECT_EQ(s.vmm_release_threshold, 0u);
  EXPECT_EQ(s.vmm_release_delay_ns, 20000000u);
  EXPECT_EQ(s.arena_shards, 12);
  EXPECT_EQ(s.large_slots, Settings::LargeSlots::always);
  EXPECT_EQ(s.buddy_region, 512 * MiB);
  EXPECT_EQ(s.slab_max_size, 256 * KiB);
  EXPECT_EQ(s.tiered_split, 512 * KiB);
  EXPECT_EQ(s.mempool_release_threshold, 2000000000u);
  EXPECT_EQ(s.trace_path, "/tmp/run-%p.gpushim-trace.zst");
  EXPECT_EQ(s.trace_stack, 16);
  EXPECT_EQ(s.oom_dump_path, "/tmp/oom-%p.dump");
  EXPECT_EQ(s.oom_dump_stack, 24);
  EXPECT_TRUE(s.fail.armed);
  EXPECT_EQ(s.fail.min_bytes, 1024 * MiB);
  EXPECT_EQ(s.fail.nth, 2u);
  EXPECT_EQ(s.peers, "0,1,3");
  EXPECT_EQ(s.placement, "spill");
  EXPECT_TRUE(s.spill_host);
  EXPECT_EQ(s.spill_limit.bytes, 6 * GiB);
  EXPECT_EQ(s.spill_limit.percent, 0.0);
  // and each variable the test above sets is a row of the table, and the other way round
  std::set<std::string> rows, given;
  for (const SettingRow& row : setting_rows()) rows.insert(row.variable);
  for (const auto& [variable, value] : every_variable) given.insert(variable);
  EXPECT_EQ(given, rows) << "a row of the table this test does not set, or a variable the table lacks";
}

TEST(Settings, EmptyValueMeansDefault) {
  const Settings s = parse({{"GPUSHIM_BACKEND", ""}, {"GPUSHIM_LIMIT", ""}});
  EXPECT_TRUE(s.errors.empty());
  EXPECT_EQ(s.backend, kDefaultBackend);
}

TEST(Settings, EveryBackendNameIsAccepted) {
  for (const char* name : {"tiered", "vmm", "buddy", "slab", "mempool", "passthrough"})
    EXPECT_EQ(parse({{"GPUSHIM_BACKEND", name}}).backend, name);
}

// One bad value per row: one line naming the variable, the value and the accepted values from the
// table; the backend becomes passthrough; the setting keeps its default.
TEST(Settings, BadValueOfEveryRowGivesOneLineAndPassthrough) {
  const Environment bad = {
      {"GPUSHIM_BACKEND", "foo"},          {"GPUSHIM_STATS", "2"},
      {"GPUSHIM_LOG", "loud"},             {"GPUSHIM_STRICT", "maybe"},
      {"GPUSHIM_LIMIT", "lots"},           {"GPUSHIM_VMM_RESERVE", "1MiB"},
      {"GPUSHIM_VMM_GROW_STEP", "4k"},     {"GPUSHIM_VMM_RELEASE_THRESHOLD", "-1"},
      {"GPUSHIM_BUDDY_REGION", "3GiB"},    {"GPUSHIM_SLAB_MAX_SIZE", "100"},
      {"GPUSHIM_TIERED_SPLIT", "0"},       {"GPUSHIM_MEMPOOL_RELEASE_THRESHOLD", "1 GiB each"},
      {"GPUSHIM_TRACE_STACK", "65"},       {"GPUSHIM_PEERS", "0,,1"},
      {"GPUSHIM_PLACEMENT", "everywhere"}, {"GPUSHIM_SPILL", "disk"},
      {"GPUSHIM_SPILL_LIMIT", "0"},        {"GPUSHIM_FENCE_DELAY", "2s"},
      {"GPUSHIM_ARENA_SHARDS", "17"},      {"GPUSHIM_VMM_RELEASE_DELAY", "a while"},
  };
  const Settings defaults = parse({});
  for (const auto& [variable, value] : bad) {
    SCOPED_TRACE(variable + "=" + value);
    const Settings s = parse({{variable, value}});
    ASSERT_EQ(s.errors.size(), 1u);
    const std::string& line = s.errors.front();
    EXPECT_EQ(line.find(variable + "=" + value + " is not valid; accepted: "), 0u) << line;
    const SettingRow* row = nullptr;
    for (const SettingRow& candidate : setting_rows())
      if (variable == candidate.variable) row = &candidate;
    ASSERT_NE(row, nullptr);
    EXPECT_NE(line.find(row->accepted), std::string::npos) << line;
    EXPECT_NE(line.find("Using passthrough."), std::string::npos) << line;
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_EQ(s.backend, "passthrough");
    EXPECT_EQ(s.vmm_grow_step, defaults.vmm_grow_step);
    EXPECT_EQ(s.log, defaults.log);
  }
}

TEST(Settings, BackendMessageListsTheBackends) {
  const Settings s = parse({{"GPUSHIM_BACKEND", "foo"}});
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_EQ(s.errors.front(),
            "GPUSHIM_BACKEND=foo is not valid; accepted: tiered, vmm, buddy, slab, mempool, passthrough. "
            "Using passthrough.");
}

TEST(Settings, TwoBadValuesGiveTwoLines) {
  const Settings s = parse({{"GPUSHIM_BACKEND", "vmm"}, {"GPUSHIM_LOG", "x"}, {"GPUSHIM_LIMIT", "y"}});
  EXPECT_EQ(s.errors.size(), 2u);
  EXPECT_EQ(s.backend, "passthrough");
}

TEST(Settings, StrictChangesTheEndingOfTheLine) {
  const Settings s = parse({{"GPUSHIM_STRICT", "1"}, {"GPUSHIM_PLACEMENT", "x"}});
  ASSERT_EQ(s.errors.size(), 1u);
  EXPECT_NE(s.errors.front().find("Exiting (GPUSHIM_STRICT=1)."), std::string::npos);
}

TEST(Settings, RowsAreComplete) {
  for (const SettingRow& row : setting_rows()) {
    SCOPED_TRACE(row.variable);
    EXPECT_EQ(std::string(row.variable).rfind("GPUSHIM_", 0), 0u);
    EXPECT_NE(std::string(row.type), "");
    EXPECT_NE(std::string(row.accepted), "");
    EXPECT_NE(std::string(row.help), "");
  }
}

// settings() reads the real environment once and prints the problems itself. Each case runs in a
// forked child (death test), where settings() has not been called yet.
TEST(SettingsDeathTest, BadValuePrintsOneLineAndContinues) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(
      {
        ::setenv("GPUSHIM_BACKEND", "foo", 1);
        ::unsetenv("GPUSHIM_STRICT");
        ::unsetenv("GPUSHIM_LOG");
        const bool passthrough = settings().backend == "passthrough";
        ::_exit(passthrough ? 0 : 3);
      },
      ::testing::ExitedWithCode(0),
      "^gpushim: GPUSHIM_BACKEND=foo is not valid; accepted: tiered, vmm, buddy, slab, mempool, "
      "passthrough\\. Using passthrough\\.\n$");
}

TEST(SettingsDeathTest, QuietSilencesTheLine) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(
      {
        ::setenv("GPUSHIM_BACKEND", "foo", 1);
        ::setenv("GPUSHIM_LOG", "quiet", 1);
        ::unsetenv("GPUSHIM_STRICT");
        ::_exit(settings().backend == "passthrough" ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "^$");
}

TEST(SettingsDeathTest, StrictMakesABadValueFatal) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(
      {
        ::setenv("GPUSHIM_BACKEND", "foo", 1);
        ::setenv("GPUSHIM_STRICT", "1", 1);
        ::setenv("GPUSHIM_LOG", "quiet", 1);  // strict speaks even when quiet: it is about to exit
        settings();
        ::_exit(0);
      },
      ::testing::ExitedWithCode(1), "GPUSHIM_BACKEND=foo is not valid.*Exiting \\(GPUSHIM_STRICT=1\\)");
}

TEST(SettingsDeathTest, ParsedOnceAndStable) {
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(
      {
        ::setenv("GPUSHIM_BACKEND", "slab", 1);
        const Settings* first = &settings();
        ::setenv("GPUSHIM_BACKEND", "vmm", 1);
        const Settings* second = &settings();
        ::_exit(first == second && second->backend == "slab" ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace gpushim

namespace gpushim {
namespace {

// Every choice is judged the same way: any case, stored as the table spells it.
TEST(Settings, ChoicesIgnoreCaseAndKeepTheTablesSpelling) {
  const Settings s = parse({{"GPUSHIM_BACKEND", "VMM"}, {"GPUSHIM_PLACEMENT", "Spill"},
                            {"GPUSHIM_FREE_FENCE", "ALWAYS"}, {"GPUSHIM_LOG", "Debug"}, {"GPUSHIM_PEERS", "ALL"}});
  EXPECT_TRUE(s.errors.empty()) << s.errors.front();
  EXPECT_EQ(s.backend, "vmm");
  EXPECT_EQ(s.placement, "spill");
  EXPECT_EQ(s.free_fence, Settings::FreeFence::always);
  EXPECT_EQ(s.log, LogLevel::debug);
  EXPECT_EQ(s.peers, "all");
}

TEST(Settings, DeviceNumbersStayInTheRangeGpushimServes) {
  EXPECT_EQ(parse({{"GPUSHIM_PEERS", "0,63"}}).peers, "0,63");
  for (const char* list : {"64", "0,1000", "99999999999999999999999999", "0,,1", ",0", "0,", "-1"})
    EXPECT_EQ(parse({{"GPUSHIM_PEERS", list}}).errors.size(), 1u) << list;
}

const SettingRow& row_named(const char* variable) {
  for (const SettingRow& row : setting_rows())
    if (std::string(row.variable) == variable) return row;
  ADD_FAILURE() << variable;
  return setting_rows().front();
}

TEST(Settings, MeaningOfAValueIsItsParsedForm) {
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_BACKEND"), "Buddy"), "buddy");
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_BACKEND"), ""), "tiered");
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_STATS"), "yes"), "on");
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_VMM_GROW_STEP"), "64m"), "67108864 bytes (64.00 MiB)");
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_LIMIT"), "12.5%"), "12.5% of each device's memory");
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_LIMIT"), ""), "0 (none)");
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_PEERS"), "0,2"), "devices 0,2");
  EXPECT_EQ(setting_value_meaning(row_named("GPUSHIM_TRACE"), ""), "none");
}

}  // namespace
}  // namespace gpushim
