// The HTML report as a person sees it: rendered by headless Chromium (installed by scripts/setup.sh),
// checked by its screenshot (size, and the colours of the plots where they belong) and by the DOM the
// page's script drew (ticks on both axes, the zoomed window, width that follows the window).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#ifdef GPUSHIM_HAVE_PNG
#include <png.h>
#endif

#include "tests/trace_test_support.h"
#include "analysis/trace_html_report.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::tracing {
namespace {

const std::string kTorchTrace = std::string(GPUSHIM_TEST_DATA_DIR) + "/torch_transformer.trace.zst";

std::string chromium() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (access(p, X_OK) == 0) return p;
  return "";
}

std::string run_chromium(const std::string& dir, const std::string& arguments) {
  const std::string command = chromium() +
                              " --headless --no-sandbox --disable-gpu --hide-scrollbars --disable-background-networking"
                              " --disable-component-update --disable-sync --no-first-run --user-data-dir=" +
                              dir + "/profile " + arguments + " 2>/dev/null";
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return out;
  char buf[65536];
  for (std::size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  pclose(pipe);
  return out;
}

// The page at `url` as the script left it, in a window `width` pixels wide.
std::string rendered_dom(const std::string& dir, const std::string& url, int width) {
  return run_chromium(dir, "--window-size=" + std::to_string(width) + ",1200 --virtual-time-budget=5000 --dump-dom '" +
                               url + "'");
}

class TraceReportRender : public ::testing::Test {
 protected:
  void SetUp() override {
    if (chromium().empty()) GTEST_SKIP() << "chromium is not installed: run scripts/setup.sh";
    dir_ = testing::make_temp_dir();
    html_ = dir_ + "/torch.html";
    std::ostringstream out, err;
    ASSERT_EQ(run_trace_report(kTorchTrace, html_, {out, err, false}), 0) << err.str();
  }
  std::string dir_, html_;
};

// The texts of one kind of tick (class="xtick" or "ytick") inside the svg with this id.
std::vector<std::string> ticks_in(const std::string& dom, const std::string& id, const std::string& kind) {
  std::vector<std::string> out;
  const std::size_t from = dom.find("id=\"" + id + "\"");
  if (from == std::string::npos) return out;
  const std::string svg = dom.substr(from, dom.find("</svg>", from) - from);
  const std::regex tick("class=\"" + kind + "\"[^>]*>([^<]*)<");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tick); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1]);
  return out;
}

double milliseconds(const std::string& tick) {
  double value = std::stod(tick);
  if (tick.find(" ms") != std::string::npos) return value;
  if (tick.find(" us") != std::string::npos) return value / 1e3;
  if (tick.find(" ns") != std::string::npos) return value / 1e6;
  return value * 1e3;  // " s"
}

int svg_width(const std::string& dom, const std::string& id) {
  std::smatch m;
  const std::regex width("<svg id=\"" + id + "\" width=\"(\\d+)\"");
  return std::regex_search(dom, m, width) ? std::stoi(m[1]) : -1;
}

TEST_F(TraceReportRender, IsOneFileThatNeedsNothingElse) {
  std::ifstream f(html_);
  const std::string html((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (const char* outside : {"src=", "href=", "<link", "@import", "url("})
    EXPECT_EQ(html.find(outside), std::string::npos) << outside;
}

TEST_F(TraceReportRender, OpensOnWhereMemoryMovesWithTicksOnBothAxes) {
  const std::string dom = rendered_dom(dir_, "file://" + html_, 1200);
  ASSERT_NE(dom.find("data-rendered=\"1\""), std::string::npos) << "the script did not finish";
  // The bundled run is 6.5 s, flat until ~5 s: the window opens on the part where memory moves.
  const std::vector<std::string> x = ticks_in(dom, "plot-memory", "xtick");
  ASSERT_GE(x.size(), 5u);
  EXPECT_GE(milliseconds(x.front()), 4500.0) << x.front();
  EXPECT_LE(milliseconds(x.back()), 6600.0) << x.back();
  const std::vector<std::string> y = ticks_in(dom, "plot-memory", "ytick");
  ASSERT_GE(y.size(), 4u) << "more than 0 and the maximum";
  EXPECT_EQ(y.front(), "0 GiB");
  EXPECT_NE(y[1].find("GiB"), std::string::npos);
  // The overview strip covers the whole run; the lifetime view shares the window's time axis.
  EXPECT_LE(milliseconds(ticks_in(dom, "plot-overview", "xtick").front()), 0.0);
  EXPECT_EQ(ticks_in(dom, "plot-lifetimes", "xtick"), x);
  EXPECT_GE(ticks_in(dom, "plot-sizes", "ytick").size(), 3u);
}

TEST_F(TraceReportRender, AWindowInTheAddressZoomsTheTimeAxis) {
  const std::string dom = rendered_dom(dir_, "file://" + html_ + "#window=5500000000-5600000000", 1200);
  const std::vector<std::string> x = ticks_in(dom, "plot-memory", "xtick");
  ASSERT_GE(x.size(), 5u);
  EXPECT_GE(milliseconds(x.front()), 5500.0) << x.front();
  EXPECT_LE(milliseconds(x.back()), 5600.0) << x.back();
}

TEST_F(TraceReportRender, WidthFollowsTheWindow) {
  const int narrow = svg_width(rendered_dom(dir_, "file://" + html_, 800), "plot-memory");
  const int wide = svg_width(rendered_dom(dir_, "file://" + html_, 1600), "plot-memory");
  EXPECT_GT(narrow, 600);
  EXPECT_LE(narrow, 800);
  EXPECT_GT(wide, 1400);
  EXPECT_LE(wide, 1600);
}

TEST_F(TraceReportRender, SitesAreToldApartAndCarryTheirStacks) {
  const std::string dom = rendered_dom(dir_, "file://" + html_, 1200);
  const std::size_t table = dom.find("id=\"table-sites\"");
  ASSERT_NE(table, std::string::npos);
  const std::string rows = dom.substr(table, dom.find("</table>", table) - table);
  const std::regex name("<td class=\"name\">([^<]*)</td>");
  std::set<std::string> names;
  std::size_t count = 0;
  for (auto it = std::sregex_iterator(rows.begin(), rows.end(), name); it != std::sregex_iterator(); ++it, ++count)
    names.insert((*it)[1]);
  EXPECT_GE(count, 10u);
  EXPECT_EQ(names.size(), count) << "two sites read the same";
  // Hovering shows the stack from the page's data: every drawn site has its frames there.
  EXPECT_NE(dom.find("\"stack\":[\"libcudart.so.13+0x"), std::string::npos);
}

// Hovering a block shows its stack: "#block=N" hovers block N through the mouse's own handler.
TEST_F(TraceReportRender, HoveringABlockShowsItsStack) {
  const std::string dom = rendered_dom(dir_, "file://" + html_ + "#window=0-7000000000&block=0", 1200);
  const std::size_t tip = dom.find("<div id=\"tooltip\"");
  ASSERT_NE(tip, std::string::npos);
  // The tooltip is the last element before the page's data and script.
  const std::string tooltip = dom.substr(tip, dom.find("<script", tip) - tip);
  EXPECT_NE(tooltip.find("display: block"), std::string::npos) << tooltip;
  EXPECT_NE(tooltip.find("allocated at"), std::string::npos) << tooltip;
  EXPECT_NE(tooltip.find("libcudart.so.13+0x"), std::string::npos) << "the stack, innermost first: " << tooltip;
  EXPECT_NE(tooltip.find("allocator frames skipped]"), std::string::npos) << "the site's label: " << tooltip;
}

#ifdef GPUSHIM_HAVE_PNG
struct Screenshot {
  png_uint_32 width = 0, height = 0;
  std::vector<unsigned char> rgb;
  std::size_t count(unsigned colour, png_uint_32 y0 = 0, png_uint_32 y1 = ~0u) const {
    std::size_t n = 0;
    for (png_uint_32 y = y0; y < std::min(height, y1); ++y)
      for (png_uint_32 x = 0; x < width; ++x) {
        const unsigned char* p = &rgb[(std::size_t(y) * width + x) * 3];
        n += ((unsigned(p[0]) << 16) | (unsigned(p[1]) << 8) | p[2]) == colour;
      }
    return n;
  }
  // Leftmost and rightmost columns where `colour` appears.
  std::pair<png_uint_32, png_uint_32> columns(unsigned colour) const {
    png_uint_32 lo = width, hi = 0;
    for (png_uint_32 y = 0; y < height; ++y)
      for (png_uint_32 x = 0; x < width; ++x) {
        const unsigned char* p = &rgb[(std::size_t(y) * width + x) * 3];
        if (((unsigned(p[0]) << 16) | (unsigned(p[1]) << 8) | p[2]) == colour) lo = std::min(lo, x), hi = std::max(hi, x);
      }
    return {lo, hi};
  }
};

bool read_png(const std::string& path, Screenshot* shot) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) return false;
  image.format = PNG_FORMAT_RGB;
  shot->width = image.width;
  shot->height = image.height;
  shot->rgb.resize(PNG_IMAGE_SIZE(image));
  return png_image_finish_read(&image, nullptr, shot->rgb.data(), 0, nullptr) != 0;
}

TEST_F(TraceReportRender, ScreenshotShowsThePlotsAcrossTheWindow) {
  const std::string png = dir_ + "/torch.png";
  run_chromium(dir_, "--window-size=1200,1700 --virtual-time-budget=5000 --screenshot=" + png + " file://" + html_);
  Screenshot shot;
  ASSERT_TRUE(read_png(png, &shot)) << "no screenshot at " << png;
  EXPECT_EQ(shot.width, 1200u);
  EXPECT_EQ(shot.height, 1700u);
  // The plots' own colours (analysis/trace_html_report.cpp): the live and reserved lines, the bars of the
  // top site in the lifetime view and the size histogram. Each is drawn, not a few stray pixels.
  EXPECT_GT(shot.count(0x1f77b4), 1500u) << "live bytes line";
  EXPECT_GT(shot.count(0xff7f0e), 800u) << "reserved bytes line";
  EXPECT_GT(shot.count(0x4e79a7), 500u) << "blocks of the top site";
  EXPECT_GT(shot.count(0x59a14f), 3000u) << "size histogram bars (and the third site)";
  // The live line runs across the width of the page, not squeezed into a corner.
  const auto [left, right] = shot.columns(0x1f77b4);
  EXPECT_LT(left, 120u);
  EXPECT_GT(right, 1200u - 60u);
}
#else
TEST_F(TraceReportRender, ScreenshotShowsThePlotsAcrossTheWindow) {
  GTEST_SKIP() << "built without libpng (libpng-dev, installed by scripts/setup.sh): cannot read the screenshot";
}
#endif

}  // namespace
}  // namespace gpushim::tracing
