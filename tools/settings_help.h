// The settings table (config/settings.cpp) printed for people: by `gpushim settings`, and as the
// Markdown table that README.md and docs/configuration.md paste (`gpushim settings --markdown`).
#pragma once

#include <string>

namespace gpushim::tools {

std::string settings_as_text();
std::string settings_as_markdown();

}  // namespace gpushim::tools
