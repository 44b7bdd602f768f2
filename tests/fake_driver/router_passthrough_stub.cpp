// A router that forwards every request to the real driver: lets the interposer's tests run before
// (or without) the real router. Test-only; never part of the shipped libgpushim.so.
#include "driver/real_driver.h"
#include "router/peer_access.h"
#include "router/router.h"
#include "router/stream_activity.h"

namespace gpushim::router {

CUresult allocate(CUdeviceptr* out, std::size_t bytes) noexcept { return real_driver().cuMemAlloc(out, bytes); }
CUresult free(CUdeviceptr p) noexcept { return real_driver().cuMemFree(p); }
CUresult allocate_async(CUdeviceptr* out, std::size_t bytes, CUstream stream) noexcept {
  return real_driver().cuMemAllocAsync(out, bytes, stream);
}
CUresult free_async(CUdeviceptr p, CUstream stream) noexcept { return real_driver().cuMemFreeAsync(p, stream); }
CUresult allocate_pitch(CUdeviceptr* out, std::size_t* pitch, std::size_t width_bytes, std::size_t height,
                        unsigned int element_size_bytes) noexcept {
  return real_driver().cuMemAllocPitch(out, pitch, width_bytes, height, element_size_bytes);
}
CUresult get_info(std::size_t* free_bytes, std::size_t* total_bytes) noexcept {
  return real_driver().cuMemGetInfo(free_bytes, total_bytes);
}
void on_stream_created(CUstream, unsigned int) noexcept {}
void on_stream_destroying(CUstream) noexcept {}
void on_capture_begin(CUstream) noexcept {}
void on_capture_end(CUstream) noexcept {}
void after_context_synchronize(CUcontext) noexcept {}
bool find_block(CUdeviceptr, BlockInfo*) noexcept { return false; }
// Work submissions are not tracked: with no record ever handed out, the cached path is never taken.
std::atomic<std::uint64_t> g_stream_records_generation{1};
StreamRecord* begin_stream_work_uncached(CUstream) noexcept { return nullptr; }
StreamRecord* become_active(StreamRecord*) noexcept { return nullptr; }
void probe_after_submission(StreamRecord*) noexcept {}
// Legacy work is not tracked either: it is never counted, so begin_legacy_work returns at once.
std::atomic<std::uint64_t> g_unordered{0};
LegacyStripe g_legacy_submissions[kLegacyStripes];
std::atomic<int> g_legacy_rules{0};
StreamRecord g_legacy_submission;
int read_legacy_rules() noexcept { return 0; }
LegacyStripe* assign_legacy_stripe() noexcept { return &g_legacy_submissions[0]; }
void check_legacy_context() noexcept {}
void legacy_work_beside_solo() noexcept {}
void before_capture_begins() noexcept {}
void capture_began() noexcept {}
void on_peer_access_enabled(CUcontext) noexcept {}
void on_peer_access_disabled(CUcontext) noexcept {}
void on_pool_access_set(CUmemoryPool, const CUmemAccessDesc*, std::size_t) noexcept {}

}  // namespace gpushim::router
