#include "router/access_grants.h"

#include <gtest/gtest.h>

namespace gpushim {
namespace {

using Change = AccessGrants::Change;

TEST(AccessGrants, EitherSourceGrantsAndAccessEndsWhenNeitherHolds) {
  AccessGrants grants;
  EXPECT_FALSE(grants.granted(0, 1));
  EXPECT_EQ(grants.set(0, 1, AccessGrants::peer_context, true), Change::granted);
  EXPECT_EQ(grants.set(0, 1, AccessGrants::peer_context, true), Change::none);  // idempotent
  EXPECT_EQ(grants.set(0, 1, AccessGrants::pool, true), Change::none);          // already reachable
  EXPECT_EQ(grants.set(0, 1, AccessGrants::peer_context, false), Change::none); // the pool still grants
  EXPECT_TRUE(grants.granted(0, 1));
  EXPECT_EQ(grants.set(0, 1, AccessGrants::pool, false), Change::revoked);
  EXPECT_FALSE(grants.granted(0, 1));
  EXPECT_EQ(grants.set(0, 1, AccessGrants::pool, false), Change::none);
}

TEST(AccessGrants, DirectionsAreApartAndOwnOrInvalidDevicesNeverChange) {
  AccessGrants grants;
  EXPECT_EQ(grants.set(0, 1, AccessGrants::peer_context, true), Change::granted);
  EXPECT_FALSE(grants.granted(1, 0));
  EXPECT_EQ(grants.set(2, 2, AccessGrants::pool, true), Change::none);
  EXPECT_EQ(grants.set(-1, 0, AccessGrants::pool, true), Change::none);
  EXPECT_EQ(grants.set(0, AccessGrants::kMaxDevices, AccessGrants::pool, true), Change::none);
  EXPECT_FALSE(grants.granted(0, -1));
}

}  // namespace
}  // namespace gpushim
