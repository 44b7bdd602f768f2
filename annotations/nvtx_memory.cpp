#include "annotations/nvtx_memory.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>

#include <nvtx3/nvToolsExtMem.h>

#include "annotations/nvtx_domain.h"
#include "diagnostics/log.h"

namespace gpushim::annotations {

int HeapTable::index_containing(std::uintptr_t address) const noexcept {
  // The last heap whose base is <= address (heaps are sorted and disjoint).
  int lo = 0, hi = count_;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (heaps_[mid].base <= address) lo = mid + 1; else hi = mid;
  }
  if (lo == 0) return -1;
  const Heap& heap = heaps_[lo - 1];
  return address - heap.base < heap.size ? lo - 1 : -1;
}

bool HeapTable::add(std::uintptr_t base, std::size_t size, void* handle) noexcept {
  if (count_ == kMaxHeaps || size == 0) return false;
  int at = count_;
  while (at > 0 && heaps_[at - 1].base > base) {
    heaps_[at] = heaps_[at - 1];
    --at;
  }
  heaps_[at] = Heap{base, size, handle};
  ++count_;
  return true;
}

void* HeapTable::find(std::uintptr_t ptr, std::size_t size) const noexcept {
  const int i = index_containing(ptr);
  if (i < 0) return nullptr;
  const Heap& heap = heaps_[i];
  return size <= heap.size - (ptr - heap.base) ? heap.handle : nullptr;
}

void* HeapTable::find_containing(std::uintptr_t address, std::uintptr_t* end) const noexcept {
  const int i = index_containing(address);
  if (i < 0) return nullptr;
  *end = heaps_[i].base + heaps_[i].size;
  return heaps_[i].handle;
}

void* HeapTable::remove(std::uintptr_t base) noexcept {
  const int i = index_containing(base);
  if (i < 0 || heaps_[i].base != base) return nullptr;
  void* handle = heaps_[i].handle;
  std::copy(heaps_ + i + 1, heaps_ + count_, heaps_ + i);
  --count_;
  return handle;
}

namespace {

// Whether a tool took NVTX's memory extension. Decided by the first heap registration: NVTX resolves
// the extension on its first call (looks for NVTX_INJECTION64_PATH, asks the library's
// InitializeInjectionNvtxExtension) and never again. Deliberately not the core domain handle: a tool
// may serve the memory extension without the core API (then nvtxDomainCreateA answers null although
// the memory calls reach the tool), and compute-sanitizer ignores the domain.
enum : int { kUnknown = 0, kNoTool = 1, kTool = 2 };
std::atomic<int> g_memory_tool{kUnknown};

std::mutex g_mutex;  // taken only with a tool attached
HeapTable g_heaps;
// Live blocks registered with the tool -> requested size, to unregister every piece of a block that
// straddles mappings. Only filled with a tool attached.
std::unordered_map<std::uintptr_t, std::size_t>* g_blocks = nullptr;

bool memory_extension_loaded(nvtxMemHeapHandle_t first_heap) noexcept {
#if defined(NVTX_EXT_MEM_VERSIONED_ID) && !defined(NVTX_DISABLE)
  // NVTX's function slots, final once the first call returned (nvtxExtImplMem_v1.h; slot 0 is the
  // module state, which reads "loaded" even when no library was found, so it cannot tell). A slot a
  // tool took holds its function; without a tool every slot is NVTX_EXTENSION_DISABLED.
  (void)first_heap;
  const intptr_t* slots = NVTX_EXT_MEM_VERSIONED_ID(nvtxExtMemSlots) + 1;
  auto taken = [&](int id) { return slots[id] != NVTX_EXTENSION_DISABLED && slots[id] != NVTX_EXTENSION_FRESH; };
  return taken(NVTX3EXT_CBID_nvtxMemHeapRegister) && taken(NVTX3EXT_CBID_nvtxMemRegionsRegister);
#else
  return first_heap != nullptr;
#endif
}

// The descriptor is exactly the one in compute-sanitizer's NVTX guide (Pools Management) and its
// NvtxMemoryPool sample: these six fields set, everything else zero, so no name (messageType stays
// NVTX_MESSAGE_UNKNOWN). The guide documents names only through nvtxMemRegionsName; a heap that also
// carried messageType ASCII + a message, its one difference from the guide's, was answered "Call to
// nvtxMemHeapRegister failed: One or more of the parameters is invalid" on the H100 (CUDA 13.0).
nvtxMemHeapHandle_t register_heap(std::uintptr_t base, std::size_t size) noexcept {
  nvtxMemVirtualRangeDesc_t range{};
  range.size = size;
  range.ptr = reinterpret_cast<const void*>(base);
  nvtxMemHeapDesc_t desc{};
  desc.extCompatID = NVTX_EXT_COMPATID_MEM;
  desc.structSize = sizeof(nvtxMemHeapDesc_t);
  desc.usage = NVTX_MEM_HEAP_USAGE_TYPE_SUB_ALLOCATOR;  // only registered regions may be touched
  desc.type = NVTX_MEM_TYPE_VIRTUAL_ADDRESS;            // the only type compute-sanitizer accepts
  desc.typeSpecificDescSize = sizeof(nvtxMemVirtualRangeDesc_t);
  desc.typeSpecificDesc = &range;
  return nvtxMemHeapRegister(detail::domain(), &desc);
}

void register_region(nvtxMemHeapHandle_t heap, std::uintptr_t ptr, std::size_t size) noexcept {
  nvtxMemVirtualRangeDesc_t region{};
  region.ptr = reinterpret_cast<const void*>(ptr);
  region.size = size;
  nvtxMemRegionsRegisterBatch_t batch{};
  batch.extCompatID = NVTX_EXT_COMPATID_MEM;
  batch.structSize = sizeof batch;
  batch.regionType = NVTX_MEM_TYPE_VIRTUAL_ADDRESS;
  batch.heap = heap;
  batch.regionCount = 1;
  batch.regionDescElementSize = sizeof region;
  batch.regionDescElements = &region;
  batch.regionHandleElementsOut = nullptr;  // allowed for virtual addresses: we refer to it by pointer
  nvtxMemRegionsRegister(detail::domain(), &batch);
}

void unregister_region(std::uintptr_t ptr) noexcept {
  nvtxMemRegionRef_t ref{};
  ref.pointer = reinterpret_cast<const void*>(ptr);
  nvtxMemRegionsUnregisterBatch_t batch{};
  batch.extCompatID = NVTX_EXT_COMPATID_MEM;
  batch.structSize = sizeof batch;
  batch.refType = NVTX_MEM_REGION_REF_TYPE_POINTER;
  batch.refCount = 1;
  batch.refElementSize = sizeof ref;
  batch.refElements = &ref;
  nvtxMemRegionsUnregister(detail::domain(), &batch);
}

// The piece of [address, end) inside one heap: its heap (nullptr when no heap holds `address`) and
// where the piece stops.
nvtxMemHeapHandle_t piece_at(std::uintptr_t address, std::uintptr_t end, std::uintptr_t* piece_end) noexcept {
  std::uintptr_t heap_end = 0;
  void* heap;
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    heap = g_heaps.find_containing(address, &heap_end);
  }
  *piece_end = std::min(end, heap_end);
  return static_cast<nvtxMemHeapHandle_t>(heap);
}

// NVTX calls are made outside g_mutex: the tool may call into CUDA, which may come back to gpushim.
void for_each_piece(std::uintptr_t ptr, std::size_t size, bool registering) noexcept {
  const std::uintptr_t end = ptr + size;
  for (std::uintptr_t address = ptr; address < end;) {
    std::uintptr_t piece_end = 0;
    nvtxMemHeapHandle_t heap = piece_at(address, end, &piece_end);
    if (heap == nullptr) return;  // past the mapped heaps: the tool knows nothing there to check
    if (registering)
      register_region(heap, address, piece_end - address);
    else
      unregister_region(address);
    address = piece_end;
  }
}

}  // namespace

bool tool_attached() noexcept {
  return g_memory_tool.load(std::memory_order_acquire) == kTool || detail::domain() != nullptr;
}

void on_memory_mapped(std::uintptr_t base, std::size_t size, int device) noexcept {
  const int state = g_memory_tool.load(std::memory_order_acquire);
  if (state == kNoTool || size == 0) return;
  nvtxMemHeapHandle_t heap = register_heap(base, size);
  if (state == kUnknown) {
    // Racing first maps decide the same way: NVTX resolves the extension once, before either returns.
    const bool loaded = memory_extension_loaded(heap);
    g_memory_tool.store(loaded ? kTool : kNoTool, std::memory_order_release);
    if (loaded) detail::g_tool_takes_blocks.store(true, std::memory_order_release);
    if (!loaded) return;
    // Once per process, and only under a tool: says on the GPU which half of the story ran. The range
    // tells a refused heap apart: it is exactly one cuMemMap'd range (device >= 0) or host memory.
    log(LogLevel::info,
        "NVTX memory tool attached: heaps per mapping, regions per block (first heap %s: %#llx + %zu, device %d)",
        heap != nullptr ? "accepted" : "refused", static_cast<unsigned long long>(base), size, device);
  }
  if (heap == nullptr) return;  // the tool refused this range: its blocks stay unchecked
  bool added;
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    added = g_heaps.add(base, size, heap);
  }
  if (!added) nvtxMemHeapUnregister(detail::domain(), heap);
}

void on_memory_unmapping(std::uintptr_t base) noexcept {
  if (g_memory_tool.load(std::memory_order_acquire) != kTool) return;
  void* heap;
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    heap = g_heaps.remove(base);
  }
  if (heap != nullptr) nvtxMemHeapUnregister(detail::domain(), static_cast<nvtxMemHeapHandle_t>(heap));
}


namespace detail {
std::atomic<bool> g_tool_takes_blocks{false};
}  // namespace detail

void detail::register_block(std::uintptr_t ptr, std::size_t size) noexcept {
  if (g_memory_tool.load(std::memory_order_acquire) != kTool) return;
  // A zero-byte block is left out: any access to it is then an error, as it should be.
  if (size == 0 || ptr + size < ptr) return;
  {
    std::uintptr_t ignored = 0;
    std::lock_guard<std::mutex> guard(g_mutex);
    if (g_heaps.find_containing(ptr, &ignored) == nullptr) return;  // not gpushim-mapped memory
    try {
      if (!g_blocks) g_blocks = new std::unordered_map<std::uintptr_t, std::size_t>();
      (*g_blocks)[ptr] = size;
    } catch (...) {
      // Still register below: an unregistered live block would be reported on every access. Only
      // its unregistration at free is lost (a freed block then goes unchecked).
    }
  }
  for_each_piece(ptr, size, true);
}

void detail::unregister_block(std::uintptr_t ptr) noexcept {
  if (g_memory_tool.load(std::memory_order_acquire) != kTool) return;
  std::size_t size = 0;
  {
    std::lock_guard<std::mutex> guard(g_mutex);
    if (!g_blocks) return;
    auto it = g_blocks->find(ptr);
    if (it == g_blocks->end()) return;  // never registered (passthrough, zero bytes)
    size = it->second;
    g_blocks->erase(it);
  }
  for_each_piece(ptr, size, false);
}

}  // namespace gpushim::annotations
