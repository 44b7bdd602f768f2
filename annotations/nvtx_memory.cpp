#include "annotations/nvtx_memory.h"

#include <mutex>

#include <nvtx3/nvToolsExtMem.h>

#include "annotations/nvtx_domain.h"

namespace gpushim::annotations {

bool HeapTable::add(std::uintptr_t base, std::size_t size, void* handle) noexcept {
  if (count_ == kMaxHeaps || size == 0) return false;
  heaps_[count_++] = Heap{base, size, handle};
  return true;
}

void* HeapTable::find(std::uintptr_t ptr, std::size_t size) const noexcept {
  for (int i = 0; i < count_; ++i) {
    const Heap& heap = heaps_[i];
    if (ptr >= heap.base && ptr - heap.base < heap.size && size <= heap.size - (ptr - heap.base)) return heap.handle;
  }
  return nullptr;
}

void* HeapTable::remove(std::uintptr_t base) noexcept {
  for (int i = 0; i < count_; ++i) {
    if (heaps_[i].base != base) continue;
    void* handle = heaps_[i].handle;
    heaps_[i] = heaps_[--count_];
    return handle;
  }
  return nullptr;
}

namespace {

std::mutex g_mutex;  // taken only with a tool attached
HeapTable g_heaps;

}  // namespace

bool tool_attached() noexcept { return detail::domain() != nullptr; }

void on_heap_reserved(std::uintptr_t base, std::size_t size, int device) noexcept {
  nvtxDomainHandle_t domain = detail::domain();
  if (domain == nullptr || size == 0) return;
  nvtxMemVirtualRangeDesc_t range{};
  range.ptr = reinterpret_cast<const void*>(base);
  range.size = size;
  nvtxMemHeapDesc_t desc{};
  desc.extCompatID = NVTX_EXT_COMPATID_MEM;
  desc.structSize = sizeof desc;
  desc.usage = NVTX_MEM_HEAP_USAGE_TYPE_SUB_ALLOCATOR;  // only registered regions may be touched
  desc.type = NVTX_MEM_TYPE_VIRTUAL_ADDRESS;
  desc.typeSpecificDescSize = sizeof range;
  desc.typeSpecificDesc = &range;
  desc.messageType = NVTX_MESSAGE_TYPE_ASCII;
  desc.message.ascii = device >= 0 ? "gpushim heap" : "gpushim heap (host)";
  nvtxMemHeapHandle_t heap = nvtxMemHeapRegister(domain, &desc);
  if (heap == nullptr) return;
  std::lock_guard<std::mutex> guard(g_mutex);
  if (!g_heaps.add(base, size, heap)) nvtxMemHeapUnregister(domain, heap);
}

void on_heap_released(std::uintptr_t base) noexcept {
  nvtxDomainHandle_t domain = detail::domain();
  if (domain == nullptr) return;
  void* heap;
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    heap = g_heaps.remove(base);
  }
  if (heap != nullptr) nvtxMemHeapUnregister(domain, static_cast<nvtxMemHeapHandle_t>(heap));
}

void on_block_allocated(std::uintptr_t ptr, std::size_t size) noexcept {
  nvtxDomainHandle_t domain = detail::domain();
  if (domain == nullptr) return;
  void* heap;
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    heap = g_heaps.find(ptr, size == 0 ? 1 : size);
  }
  if (heap == nullptr) return;
  nvtxMemVirtualRangeDesc_t region{};
  region.ptr = reinterpret_cast<const void*>(ptr);
  region.size = size;
  nvtxMemRegionsRegisterBatch_t batch{};
  batch.extCompatID = NVTX_EXT_COMPATID_MEM;
  batch.structSize = sizeof batch;
  batch.regionType = NVTX_MEM_TYPE_VIRTUAL_ADDRESS;
  batch.heap = static_cast<nvtxMemHeapHandle_t>(heap);
  batch.regionCount = 1;
  batch.regionDescElementSize = sizeof region;
  batch.regionDescElements = &region;
  batch.regionHandleElementsOut = nullptr;  // allowed for virtual addresses: we refer to it by pointer
  nvtxMemRegionsRegister(domain, &batch);
}

void on_block_freed(std::uintptr_t ptr) noexcept {
  nvtxDomainHandle_t domain = detail::domain();
  if (domain == nullptr) return;
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    if (g_heaps.find(ptr, 1) == nullptr) return;
  }
  nvtxMemRegionRef_t ref{};
  ref.pointer = reinterpret_cast<const void*>(ptr);
  nvtxMemRegionsUnregisterBatch_t batch{};
  batch.extCompatID = NVTX_EXT_COMPATID_MEM;
  batch.structSize = sizeof batch;
  batch.refType = NVTX_MEM_REGION_REF_TYPE_POINTER;
  batch.refCount = 1;
  batch.refElementSize = sizeof ref;
  batch.refElements = &ref;
  nvtxMemRegionsUnregister(domain, &batch);
}

}  // namespace gpushim::annotations
