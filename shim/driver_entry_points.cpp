// The driver entry points gpushim serves: each turns a CUDA call into a router request, or calls the
// real driver and tells the router what happened to a stream. No policy here: the router decides.
//
// Without a driver (libcuda.so.1 absent) every entry point answers CUDA_ERROR_NOT_INITIALIZED and
// touches nothing: that is what a program would see from a driver it could not initialise.
#include "shim/driver_entry_points.h"

#include "driver/real_driver.h"
#include "router/router.h"
#include "router/stream_activity.h"
#include "shim/runtime_replay.h"

namespace {

using gpushim::real_driver;
using gpushim::RealDriver;
using gpushim::shim::driver_missing;
using gpushim::shim::per_thread_stream;
using gpushim::shim::ReplayedCall;
using gpushim::shim::take_replayed_answer;
namespace router = gpushim::router;

CUresult begin_capture(CUstream stream, CUstreamCaptureMode mode) noexcept {
  const RealDriver& driver = real_driver();
  if (driver.cuStreamBeginCapture == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  router::before_capture_begins();  // solo ends first: its end records an event on the lone stream
  const CUresult result = driver.cuStreamBeginCapture(stream, mode);
  if (result == CUDA_SUCCESS) router::on_capture_begin(stream);
  router::capture_began();
  return result;
}

CUresult begin_capture_to_graph(CUstream stream, CUgraph graph, const CUgraphNode* dependencies,
                                const CUgraphEdgeData* dependency_data, size_t dependency_count,
                                CUstreamCaptureMode mode) noexcept {
  const RealDriver& driver = real_driver();
  if (driver.cuStreamBeginCaptureToGraph == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  router::before_capture_begins();
  const CUresult result =
      driver.cuStreamBeginCaptureToGraph(stream, graph, dependencies, dependency_data, dependency_count, mode);
  if (result == CUDA_SUCCESS) router::on_capture_begin(stream);
  router::capture_began();
  return result;
}

CUresult end_capture(CUstream stream, CUgraph* graph) noexcept {
  const RealDriver& driver = real_driver();
  if (driver.cuStreamEndCapture == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuStreamEndCapture(stream, graph);
  // Whether or not it succeeded, the stream has left capture mode (an invalidated capture ends too).
  router::on_capture_end(stream);
  return result;
}

// The driver's allocate and free entry points: an error that a runtime entry point already got from the
// router is answered again (shim/runtime_replay.h), else the router serves the call (`route`, inlined:
// the common path is one thread-local load and a tail call).
template <typename Route>
__attribute__((always_inline)) inline CUresult replayed_or_routed(ReplayedCall call, std::uintptr_t key,
                                                                  const Route& route) {
  if (driver_missing()) return CUDA_ERROR_NOT_INITIALIZED;
  CUresult replayed;
  if (take_replayed_answer(call, key, &replayed)) return replayed;
  return route();
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
  return replayed_or_routed(ReplayedCall::allocate, bytesize, [=] { return router::allocate(dptr, bytesize); });
}

CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) {
  return replayed_or_routed(ReplayedCall::free, dptr, [=] { return router::free(dptr); });
}

CUresult CUDAAPI cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width_bytes, size_t height,
                                   unsigned int element_size_bytes) {
  if (driver_missing()) return CUDA_ERROR_NOT_INITIALIZED;
  return router::allocate_pitch(dptr, pitch, width_bytes, height, element_size_bytes);
}

CUresult CUDAAPI cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  if (driver_missing()) return CUDA_ERROR_NOT_INITIALIZED;
  return router::get_info(free_bytes, total_bytes);
}

CUresult CUDAAPI cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream stream) {
  return replayed_or_routed(ReplayedCall::allocate_async, bytesize,
                            [=] { return router::allocate_async(dptr, bytesize, stream); });
}

CUresult CUDAAPI cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t bytesize, CUstream stream) {
  return replayed_or_routed(ReplayedCall::allocate_async, bytesize,
                            [=] { return router::allocate_async(dptr, bytesize, per_thread_stream(stream)); });
}

CUresult CUDAAPI cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
  return replayed_or_routed(ReplayedCall::free_async, dptr, [=] { return router::free_async(dptr, stream); });
}

CUresult CUDAAPI cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
  return replayed_or_routed(ReplayedCall::free_async, dptr,
                            [=] { return router::free_async(dptr, per_thread_stream(stream)); });
}

CUresult CUDAAPI cuStreamCreate(CUstream* stream, unsigned int flags) {
  const RealDriver& driver = real_driver();
  if (driver.cuStreamCreate == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuStreamCreate(stream, flags);
  if (result == CUDA_SUCCESS) router::on_stream_created(*stream, flags);
  return result;
}

CUresult CUDAAPI cuStreamCreateWithPriority(CUstream* stream, unsigned int flags, int priority) {
  const RealDriver& driver = real_driver();
  if (driver.cuStreamCreateWithPriority == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuStreamCreateWithPriority(stream, flags, priority);
  if (result == CUDA_SUCCESS) router::on_stream_created(*stream, flags);
  return result;
}

CUresult CUDAAPI cuStreamDestroy_v2(CUstream stream) {
  const RealDriver& driver = real_driver();
  if (driver.cuStreamDestroy == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  router::on_stream_destroying(stream);
  return driver.cuStreamDestroy(stream);
}

CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode mode) {
  return begin_capture(stream, mode);
}

CUresult CUDAAPI cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode) {
  return begin_capture(per_thread_stream(stream), mode);
}

CUresult CUDAAPI cuStreamBeginCaptureToGraph(CUstream stream, CUgraph graph, const CUgraphNode* dependencies,
                                             const CUgraphEdgeData* dependency_data, size_t dependency_count,
                                             CUstreamCaptureMode mode) {
  return begin_capture_to_graph(stream, graph, dependencies, dependency_data, dependency_count, mode);
}

CUresult CUDAAPI cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph graph, const CUgraphNode* dependencies,
                                                  const CUgraphEdgeData* dependency_data, size_t dependency_count,
                                                  CUstreamCaptureMode mode) {
  return begin_capture_to_graph(per_thread_stream(stream), graph, dependencies, dependency_data,
                                dependency_count, mode);
}

CUresult CUDAAPI cuStreamEndCapture(CUstream stream, CUgraph* graph) { return end_capture(stream, graph); }

CUresult CUDAAPI cuStreamEndCapture_ptsz(CUstream stream, CUgraph* graph) {
  return end_capture(per_thread_stream(stream), graph);
}

}  // extern "C"
