#include "tools/settings_help.h"

#include "config/settings.h"

namespace gpushim::tools {
namespace {

const char* shown_default(const SettingRow& row) {
  return row.default_value[0] != '\0' ? row.default_value : "(unset)";
}

// Markdown cells cannot hold a bare '|'.
std::string cell(const char* text) {
  std::string out;
  for (const char* c = text; *c; ++c) {
    if (*c == '|') out += '\\';
    out += *c;
  }
  return out;
}

}  // namespace

std::string settings_as_text() {
  std::string out =
      "Environment variables (read once by libgpushim.so; `gpushim run` sets some from its options).\n"
      "A bad value prints one line and the program runs on passthrough; GPUSHIM_STRICT=1 makes it fatal.\n"
      "Sizes: 4096, 64k, 64KiB, 512MiB, 1.5GiB are powers of 1024; 64KB, 2GB (= 2e9) powers of 1000.\n"
      "Choices ignore case. `gpushim check` judges the values set in this environment.\n";
  for (const SettingRow& row : setting_rows()) {
    out += "\n  ";
    out += row.variable;
    out += "  (";
    out += row.type;
    out += ", default: ";
    out += shown_default(row);
    out += ")\n      accepted: ";
    out += row.accepted;
    out += "\n      ";
    out += row.help;
    out += "\n";
  }
  return out;
}

std::string settings_as_markdown() {
  std::string out =
      "| Variable | Type | Default | Accepted | Meaning |\n"
      "|---|---|---|---|---|\n";
  for (const SettingRow& row : setting_rows()) {
    out += "| `";
    out += row.variable;
    out += "` | ";
    out += row.type;
    out += " | `";
    out += shown_default(row);
    out += "` | ";
    out += cell(row.accepted);
    out += " | ";
    out += cell(row.help);
    out += " |\n";
  }
  return out;
}

}  // namespace gpushim::tools
