// The placement arithmetic (providers/placement_policy.h): which device backs each granule under each
// policy, how a device found full is learned and skipped, and the per-device accounting.
#include "providers/placement_policy.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

namespace gpushim {
namespace {

using Segments = std::vector<PlacementSegment>;

PlacementRequest request(Placement policy, int local, std::size_t first, std::size_t granules) {
  PlacementRequest r;
  r.policy = policy;
  r.local_device = local;
  r.first_granule = first;
  r.granules = granules;
  return r;
}

Segments plan(const PlacementRequest& r, const std::vector<DeviceRoom>& rooms, bool expect_ok = true) {
  Segments out{{99, 99, 99}};  // must be replaced, also on failure
  EXPECT_EQ(plan_placement(r, rooms, &out), expect_ok);
  if (!expect_ok) {
    EXPECT_TRUE(out.empty());
  }
  return out;
}

const std::size_t U = kUnknownRoom;

TEST(PlacementLocal, AllOnTheLocalDevice) {
  EXPECT_EQ(plan(request(Placement::local, 1, 0, 5), {{0, U}, {1, U}, {2, U}}), (Segments{{1, 0, 5}}));
  EXPECT_EQ(plan(request(Placement::local, 1, 0, 5), {{0, 9}, {1, 5}}), (Segments{{1, 0, 5}}));
}

TEST(PlacementLocal, FailsWhenTheLocalDeviceIsShortEvenIfPeersHaveRoom) {
  plan(request(Placement::local, 0, 0, 5), {{0, 4}, {1, 100}}, false);
  plan(request(Placement::local, 2, 0, 1), {{0, U}, {1, U}}, false);  // local device not participating
}

TEST(PlacementAny, ZeroGranulesIsNotARequest) {
  for (Placement p : {Placement::local, Placement::interleave, Placement::spill})
    plan(request(p, 0, 0, 0), {{0, U}}, false);
}

TEST(PlacementInterleave, StripesRoundRobinByGranuleIndex) {
  EXPECT_EQ(plan(request(Placement::interleave, 0, 0, 7), {{0, U}, {1, U}, {2, U}}),
            (Segments{{0, 0, 1}, {1, 1, 1}, {2, 2, 1}, {0, 3, 1}, {1, 4, 1}, {2, 5, 1}, {0, 6, 1}}));
}

TEST(PlacementInterleave, StripeFollowsTheAddressNotTheRequest) {
  // Granule 4 of the reservation is participant 4 % 3 = 1, whichever map() call maps it.
  EXPECT_EQ(plan(request(Placement::interleave, 0, 4, 3), {{0, U}, {1, U}, {2, U}}),
            (Segments{{1, 0, 1}, {2, 1, 1}, {0, 2, 1}}));
  // Participants need not be numbered from 0: the stripe is over the list.
  EXPECT_EQ(plan(request(Placement::interleave, 3, 0, 4), {{1, U}, {3, U}}),
            (Segments{{1, 0, 1}, {3, 1, 1}, {1, 2, 1}, {3, 3, 1}}));
}

TEST(PlacementInterleave, FullDeviceIsSkippedAndNeighboursMerge) {
  EXPECT_EQ(plan(request(Placement::interleave, 0, 0, 6), {{0, U}, {1, 0}, {2, U}}),
            (Segments{{0, 0, 1}, {2, 1, 2}, {0, 3, 1}, {2, 4, 2}}));
}

TEST(PlacementInterleave, UnevenRoomFillsWhatIsLeft) {
  EXPECT_EQ(plan(request(Placement::interleave, 0, 0, 4), {{0, 1}, {1, 5}}), (Segments{{0, 0, 1}, {1, 1, 3}}));
  EXPECT_EQ(plan(request(Placement::interleave, 0, 0, 6), {{0, 1}, {1, 5}}), (Segments{{0, 0, 1}, {1, 1, 5}}));
  plan(request(Placement::interleave, 0, 0, 7), {{0, 1}, {1, 5}}, false);
  plan(request(Placement::interleave, 0, 0, 1), {}, false);
}

TEST(PlacementSpill, LocalFirstThenPeersWithMostRoom) {
  EXPECT_EQ(plan(request(Placement::spill, 0, 0, 10), {{0, 3}, {1, 2}, {2, 6}}),
            (Segments{{0, 0, 3}, {2, 3, 6}, {1, 9, 1}}));
}

TEST(PlacementSpill, FitsLocallyStaysLocal) {
  EXPECT_EQ(plan(request(Placement::spill, 1, 0, 3), {{0, 100}, {1, 3}}), (Segments{{1, 0, 3}}));
  EXPECT_EQ(plan(request(Placement::spill, 1, 0, 3), {{0, U}, {1, U}}), (Segments{{1, 0, 3}}));
}

TEST(PlacementSpill, FullLocalGoesEntirelyToPeersAndTiesKeepOrder) {
  EXPECT_EQ(plan(request(Placement::spill, 1, 0, 4), {{0, 2}, {1, 0}, {2, 2}}), (Segments{{0, 0, 2}, {2, 2, 2}}));
  EXPECT_EQ(plan(request(Placement::spill, 0, 0, 4), {{0, 0}, {1, U}, {2, U}}), (Segments{{1, 0, 4}}));
}

TEST(PlacementSpill, FailsWhenEveryoneTogetherIsShort) {
  plan(request(Placement::spill, 0, 0, 10), {{0, 3}, {1, 2}, {2, 4}}, false);
}

TEST(PlacementOneDevice, EveryPolicyIsTheLocalPolicy) {
  for (Placement p : {Placement::local, Placement::interleave, Placement::spill}) {
    SCOPED_TRACE(placement_name(p));
    EXPECT_EQ(plan(request(p, 0, 5, 8), {{0, U}}), (Segments{{0, 0, 8}}));
    EXPECT_EQ(plan(request(p, 0, 5, 8), {{0, 8}}), (Segments{{0, 0, 8}}));
    plan(request(p, 0, 5, 9), {{0, 8}}, false);
  }
}

// A fake of the driver: devices with a hidden capacity in granules; backing a segment fails with
// out_of_memory past it, as cuMemCreate does.
struct HiddenCapacityDevices {
  std::map<int, std::size_t> capacity, used;
  int backs = 0, undos = 0;
  int fail_device = -1;  // a non-memory failure on this device
  BackingResult back(const PlacementSegment& s) {
    if (s.device == fail_device) return BackingResult::failed;
    if (used[s.device] + s.granules > capacity[s.device]) return BackingResult::out_of_memory;
    used[s.device] += s.granules;
    ++backs;
    return BackingResult::ok;
  }
  void undo(const PlacementSegment& s) {
    used[s.device] -= s.granules;
    ++undos;
  }
  bool run(const PlacementRequest& r, std::vector<DeviceRoom> rooms, Segments* backed) {
    return back_with_placement(
        r, std::move(rooms), [this](const PlacementSegment& s) { return back(s); },
        [this](const PlacementSegment& s) { undo(s); }, backed);
  }
};

std::size_t granules_on(const Segments& segments, int device) {
  std::size_t n = 0;
  for (const auto& s : segments)
    if (s.device == device) n += s.granules;
  return n;
}

TEST(BackWithPlacement, SpillLearnsThatLocalIsFullAndUsesPeers) {
  HiddenCapacityDevices devices;
  devices.capacity = {{0, 4}, {1, 8}, {2, 6}};
  Segments backed;
  ASSERT_TRUE(devices.run(request(Placement::spill, 0, 0, 10), {{0, U}, {1, U}, {2, U}}, &backed));
  EXPECT_EQ(granules_on(backed, 0), 4u);  // local first, filled to the last granule
  EXPECT_EQ(granules_on(backed, 0) + granules_on(backed, 1) + granules_on(backed, 2), 10u);
  for (int d : {0, 1, 2}) {
    EXPECT_LE(devices.used[d], devices.capacity[d]);
    EXPECT_EQ(devices.used[d], granules_on(backed, d)) << "undone segments still hold memory";
  }
  EXPECT_EQ(backed.front().device, 0);
}

TEST(BackWithPlacement, InterleaveSkipsADeviceFoundFull) {
  HiddenCapacityDevices devices;
  devices.capacity = {{0, 100}, {1, 2}};
  Segments backed;
  ASSERT_TRUE(devices.run(request(Placement::interleave, 0, 0, 8), {{0, U}, {1, U}}, &backed));
  EXPECT_EQ(granules_on(backed, 1), 2u);  // exactly what device 1 could hold
  EXPECT_EQ(granules_on(backed, 0), 6u);
  EXPECT_EQ(devices.used[0], 6u);
  EXPECT_EQ(devices.used[1], 2u);
}

TEST(BackWithPlacement, LocalFailsCleanlyWhenLocalIsFull) {
  HiddenCapacityDevices devices;
  devices.capacity = {{0, 3}, {1, 100}};
  Segments backed;
  EXPECT_FALSE(devices.run(request(Placement::local, 0, 0, 4), {{0, U}, {1, U}}, &backed));
  EXPECT_TRUE(backed.empty());
  EXPECT_EQ(devices.used[0], 0u);
  EXPECT_EQ(devices.used[1], 0u);
  EXPECT_EQ(devices.backs, 0);  // one failed try on the local device, nothing else
}

TEST(BackWithPlacement, EverythingFullFailsAndUndoesAll) {
  HiddenCapacityDevices devices;
  devices.capacity = {{0, 3}, {1, 2}};
  Segments backed;
  EXPECT_FALSE(devices.run(request(Placement::interleave, 0, 0, 6), {{0, U}, {1, U}}, &backed));
  EXPECT_FALSE(devices.run(request(Placement::spill, 0, 0, 6), {{0, U}, {1, U}}, &backed));
  EXPECT_EQ(devices.used[0], 0u);
  EXPECT_EQ(devices.used[1], 0u);
  EXPECT_EQ(devices.backs, devices.undos);
  // Exactly full still fits.
  EXPECT_TRUE(devices.run(request(Placement::spill, 0, 0, 5), {{0, U}, {1, U}}, &backed));
  EXPECT_EQ(devices.used[0], 3u);
  EXPECT_EQ(devices.used[1], 2u);
}

TEST(BackWithPlacement, NonMemoryFailureIsNotRetriedElsewhere) {
  HiddenCapacityDevices devices;
  devices.capacity = {{0, 100}, {1, 100}};
  devices.fail_device = 1;
  Segments backed;
  EXPECT_FALSE(devices.run(request(Placement::interleave, 0, 0, 4), {{0, U}, {1, U}}, &backed));
  EXPECT_EQ(devices.used[0], 0u);
  EXPECT_EQ(devices.backs, 1);  // granule 0 on device 0, then device 1 failed: undone, no retry
  EXPECT_EQ(devices.undos, 1);
}

TEST(PeerDevicesFromSetting, ParsesListsAndAlwaysIncludesTheLocalDevice) {
  EXPECT_EQ(peer_devices_from_setting("", 4, 2), (std::vector<int>{2}));
  EXPECT_EQ(peer_devices_from_setting("all", 4, 2), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(peer_devices_from_setting("3,1", 4, 0), (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(peer_devices_from_setting("1,1,7,12", 2, 0), (std::vector<int>{0, 1}));  // unknown ordinals dropped
  EXPECT_EQ(peer_devices_from_setting("all", 1, 0), (std::vector<int>{0}));
  EXPECT_EQ(peer_devices_from_setting("99999999999999999999", 2, 1), (std::vector<int>{1}));
}

TEST(ParsePlacement, AcceptsTheThreePoliciesAndEmpty) {
  Placement p = Placement::spill;
  EXPECT_TRUE(parse_placement("", &p));
  EXPECT_EQ(p, Placement::local);
  EXPECT_TRUE(parse_placement("interleave", &p));
  EXPECT_EQ(p, Placement::interleave);
  EXPECT_TRUE(parse_placement("spill", &p));
  EXPECT_EQ(p, Placement::spill);
  EXPECT_FALSE(parse_placement("Local", &p));
  EXPECT_EQ(p, Placement::spill);
  EXPECT_STREQ(placement_name(Placement::interleave), "interleave");
}

TEST(PerDeviceBytes, CountsPerDeviceAndIgnoresUnknownDevices) {
  PerDeviceBytes bytes(3);
  bytes.add(0, 10);
  bytes.add(2, 5);
  bytes.add(2, 5);
  bytes.add(3, 1000);   // no such device
  bytes.add(-1, 1000);
  bytes.subtract(0, 4);
  EXPECT_EQ(bytes.on(0), 6u);
  EXPECT_EQ(bytes.on(1), 0u);
  EXPECT_EQ(bytes.on(2), 10u);
  EXPECT_EQ(bytes.on(3), 0u);
  EXPECT_EQ(bytes.total(), 16u);
}

}  // namespace
}  // namespace gpushim
