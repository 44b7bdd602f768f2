// A stand-in NVTX tool for CPU tests: serves only the memory extension (no core API, so
// nvtxDomainCreateA answers null, as with a tool that ignores domains) and records every call it gets,
// one line each, readable through fake_tool_log(). Loaded by NVTX from NVTX_INJECTION64_PATH.
#include <cstdint>
#include <cstdio>
#include <string>

#include <nvtx3/nvToolsExtMem.h>

namespace {

std::string g_log;

void record(const char* what, const void* address, std::size_t size) {
  char line[96];
  std::snprintf(line, sizeof line, "%s %#llx %#llx\n", what,
                static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(address)),
                static_cast<unsigned long long>(size));
  g_log += line;
}

// Accepts only the descriptor of compute-sanitizer's NVTX guide (Pools Management): these fields set
// as there, every other field zero (no category, no message). Anything else is refused and logged.
bool documented_heap_desc(nvtxMemHeapDesc_t const* desc) {
  return desc->extCompatID == NVTX_EXT_COMPATID_MEM && desc->structSize == sizeof(nvtxMemHeapDesc_t) &&
         desc->reserved0 == 0 && desc->usage == NVTX_MEM_HEAP_USAGE_TYPE_SUB_ALLOCATOR &&
         desc->type == NVTX_MEM_TYPE_VIRTUAL_ADDRESS &&
         desc->typeSpecificDescSize == sizeof(nvtxMemVirtualRangeDesc_t) && desc->typeSpecificDesc != nullptr &&
         desc->category == 0 && desc->messageType == NVTX_MESSAGE_UNKNOWN && desc->message.ascii == nullptr;
}

nvtxMemHeapHandle_t heap_register(nvtxDomainHandle_t, nvtxMemHeapDesc_t const* desc) {
  const auto* range = static_cast<const nvtxMemVirtualRangeDesc_t*>(desc->typeSpecificDesc);
  if (!documented_heap_desc(desc)) {
    record("heap-refused", range ? range->ptr : nullptr, range ? range->size : 0);
    return nullptr;
  }
  record("heap", range->ptr, range->size);
  return reinterpret_cast<nvtxMemHeapHandle_t>(const_cast<void*>(range->ptr));  // any unique value
}

void heap_unregister(nvtxDomainHandle_t, nvtxMemHeapHandle_t heap) { record("heap-gone", heap, 0); }

void regions_register(nvtxDomainHandle_t, nvtxMemRegionsRegisterBatch_t const* batch) {
  const auto* regions = static_cast<const nvtxMemVirtualRangeDesc_t*>(batch->regionDescElements);
  for (std::size_t i = 0; i < batch->regionCount; ++i) record("region", regions[i].ptr, regions[i].size);
}

void regions_unregister(nvtxDomainHandle_t, nvtxMemRegionsUnregisterBatch_t const* batch) {
  for (std::size_t i = 0; i < batch->refCount; ++i) record("region-gone", batch->refElements[i].pointer, 0);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const char* fake_tool_log() { return g_log.c_str(); }

extern "C" __attribute__((visibility("default"))) int InitializeInjectionNvtxExtension(nvtxExtModuleInfo_t* module) {
  if (module->moduleId != NVTX_EXT_MODULEID_MEM || module->segmentsCount < 1) return 1;  // others: no-ops
  intptr_t* slots = module->segments[0].functionSlots;
  slots[NVTX3EXT_CBID_nvtxMemHeapRegister] = reinterpret_cast<intptr_t>(&heap_register);
  slots[NVTX3EXT_CBID_nvtxMemHeapUnregister] = reinterpret_cast<intptr_t>(&heap_unregister);
  slots[NVTX3EXT_CBID_nvtxMemRegionsRegister] = reinterpret_cast<intptr_t>(&regions_register);
  slots[NVTX3EXT_CBID_nvtxMemRegionsUnregister] = reinterpret_cast<intptr_t>(&regions_unregister);
  return 1;
}
