#include "annotations/nvtx_ranges.h"

#include <atomic>

#include "annotations/nvtx_domain.h"

namespace gpushim::annotations {
namespace {

constexpr int kEventCount = 5;
std::atomic<nvtxStringHandle_t> g_names[kEventCount];

nvtxStringHandle_t registered_name(nvtxDomainHandle_t domain, SlowEvent event) noexcept {
  auto& slot = g_names[static_cast<int>(event)];
  nvtxStringHandle_t name = slot.load(std::memory_order_acquire);
  if (name == nullptr) {
    // Registered strings let the tool skip copying the text on every push. A race registers twice:
    // harmless, both handles name the same string.
    name = nvtxDomainRegisterStringA(domain, slow_event_name(event));
    slot.store(name, std::memory_order_release);
  }
  return name;
}

}  // namespace

const char* slow_event_name(SlowEvent event) noexcept {
  switch (event) {
    case SlowEvent::arena_growth: return "gpushim: arena growth";
    case SlowEvent::cache_release: return "gpushim: release cached memory";
    case SlowEvent::oom_handling: return "gpushim: out-of-memory handling";
    case SlowEvent::fence_wait: return "gpushim: wait for fenced blocks";
    case SlowEvent::ipc_export: return "gpushim: IPC export";
    case SlowEvent::ipc_import: return "gpushim: IPC import";
  }
  return "gpushim";
}

ScopedRange::ScopedRange(SlowEvent event) noexcept {
  nvtxDomainHandle_t domain = detail::domain();
  if (domain == nullptr) return;
  nvtxEventAttributes_t attributes{};
  attributes.version = NVTX_VERSION;
  attributes.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  nvtxStringHandle_t name = registered_name(domain, event);
  if (name != nullptr) {
    attributes.messageType = NVTX_MESSAGE_TYPE_REGISTERED;
    attributes.message.registered = name;
  } else {
    attributes.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attributes.message.ascii = slow_event_name(event);
  }
  nvtxDomainRangePushEx(domain, &attributes);
  pushed_ = true;
}

ScopedRange::~ScopedRange() {
  if (pushed_) nvtxDomainRangePop(detail::domain());
}

}  // namespace gpushim::annotations
