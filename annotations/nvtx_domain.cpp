#include "annotations/nvtx_domain.h"

#include <atomic>
#include <mutex>

namespace gpushim::annotations::detail {
namespace {

enum : int { kUnknown = 0, kNoTool = 1, kTool = 2 };
std::atomic<int> g_state{kUnknown};
nvtxDomainHandle_t g_domain = nullptr;
std::once_flag g_once;

}  // namespace

nvtxDomainHandle_t domain() noexcept {
  const int state = g_state.load(std::memory_order_acquire);
  if (state == kNoTool) return nullptr;
  if (state == kTool) return g_domain;
  std::call_once(g_once, [] {
    // Without a tool NVTX's injection lookup fails once and every entry point becomes a null call
    // that returns 0; so a null domain means no tool, for the whole process.
    g_domain = nvtxDomainCreateA("gpushim");
    g_state.store(g_domain != nullptr ? kTool : kNoTool, std::memory_order_release);
  });
  return g_domain;
}

}  // namespace gpushim::annotations::detail
