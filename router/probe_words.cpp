#include "router/probe_words.h"

#include <atomic>

#include "diagnostics/log.h"
#include "driver/real_driver.h"

namespace gpushim::router {
namespace {

// One page of mapped pinned host memory holds the words of 1024 streams; a page is taken when the last
// is full. Pinned memory is scarce only in bulk: a program with thousands of streams takes a few pages.
constexpr std::size_t kWordsPerPage = 1024;

// Under the activity lock (the only caller of prepare_probe_word).
std::uint32_t* g_page = nullptr;
std::size_t g_page_used = kWordsPerPage;
// Set at the first refusal: the driver will refuse again, and an event probe works everywhere.
std::atomic<bool> g_refused{false};

void refuse(const char* what, CUresult rc) noexcept {
  if (g_refused.exchange(true)) return;
  log(LogLevel::debug, "%s answered %d: stream probes are events from now on", what, static_cast<int>(rc));
}

}  // namespace

bool prepare_probe_word(ProbeWord& word, CUcontext context) noexcept {
  if (g_refused.load(std::memory_order_relaxed)) return false;
  const RealDriver& driver = real_driver();
  if (!driver.cuMemHostAlloc || !driver.cuMemHostGetDevicePointer || !driver.cuStreamWriteValue32) return false;
  if (!word.host) {
    if (g_page_used == kWordsPerPage) {
      void* page = nullptr;
      const CUresult rc = driver.cuMemHostAlloc(&page, kWordsPerPage * sizeof(std::uint32_t),
                                                CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
      if (rc != CUDA_SUCCESS) {
        refuse("cuMemHostAlloc", rc);
        return false;
      }
      g_page = static_cast<std::uint32_t*>(page);
      for (std::size_t i = 0; i < kWordsPerPage; ++i) g_page[i] = 0;
      g_page_used = 0;
    }
    word.host = g_page + g_page_used++;
  }
  if (word.context != context) {
    // Portable mapped memory has an address in every context (the same one under unified addressing);
    // asked once per context the record's stream lives in.
    CUdeviceptr device = 0;
    const CUresult rc = driver.cuMemHostGetDevicePointer(&device, word.host, 0);
    if (rc != CUDA_SUCCESS) {
      refuse("cuMemHostGetDevicePointer", rc);
      return false;
    }
    word.device = device;
    word.context = context;
  }
  return true;
}

bool write_probe_value(CUstream stream, CUdeviceptr device, std::uint32_t value) noexcept {
  // The default flags order the write after the stream's earlier work and its memory operations.
  const CUresult rc = real_driver().cuStreamWriteValue32(stream, device, value, CU_STREAM_WRITE_VALUE_DEFAULT);
  if (rc != CUDA_SUCCESS) {
    refuse("cuStreamWriteValue32", rc);
    return false;
  }
  return true;
}

void reset_probe_words_after_fork() noexcept {
  g_page = nullptr;
  g_page_used = kWordsPerPage;
}

}  // namespace gpushim::router
