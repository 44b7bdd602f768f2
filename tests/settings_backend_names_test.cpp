// config does not link the allocators, so GPUSHIM_BACKEND's accepted names are written in the settings
// table by hand; this test keeps them equal to backend_table(), in order.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "allocators/backend_registry.h"
#include "config/settings.h"

namespace gpushim {
namespace {

TEST(SettingsBackendNames, AcceptedListEqualsBackendTable) {
  std::string names;
  for (const BackendInfo& info : backend_table()) names += std::string(names.empty() ? "" : ", ") + info.name;
  const SettingRow* backend_row = nullptr;
  for (const SettingRow& row : setting_rows())
    if (std::strcmp(row.variable, "GPUSHIM_BACKEND") == 0) backend_row = &row;
  ASSERT_NE(backend_row, nullptr);
  EXPECT_EQ(names, backend_row->accepted);
  EXPECT_STREQ(backend_row->default_value, kDefaultBackend);
  EXPECT_NE(find_backend(kDefaultBackend), nullptr);
}

}  // namespace
}  // namespace gpushim
