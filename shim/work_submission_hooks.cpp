// The entry points that queue work on a stream: kernel launches, async copies and sets, graph launches,
// stream memory operations, and the synchronous copies and sets (on the legacy stream: while one
// non-blocking stream works alone, they must wait for it, router/stream_activity.h). Each tells the router which stream carries work before the driver queues it
// (router/stream_activity.h: the free-safety rule follows the streams that carry work, not the streams
// that exist), then calls the driver's own function. Rows in driver_substitutions.cpp; exported through
// shim/exports.map, so programs that link libcuda directly are seen too.
//
// Not hooked, on purpose: host functions and callbacks (they touch no device memory), event records and
// stream waits (they order work but use no memory), prefetches and discards (managed memory, which
// gpushim does not serve), array copies (arrays are not gpushim memory), cuLaunchGrid* (pre-4.0 API).
#include <atomic>

#include <cuda.h>

#include "router/stream_activity.h"
#include "shim/lazy_driver_function.h"

#define GPUSHIM_EXPORT __attribute__((visibility("default")))

// One entry point: `symbol` with the parameter list `params`, forwarding `args`, queuing on `stream`.
#define GPUSHIM_WORK_ENTRY(symbol, per_thread, params, args, stream)                         \
  extern "C" GPUSHIM_EXPORT CUresult CUDAAPI symbol params;                                  \
  extern "C" CUresult CUDAAPI symbol params {                                                \
    GPUSHIM_DRIVER_OWN_FUNCTION(function, symbol, params);                                   \
    gpushim::router::StreamRecord* work = gpushim::router::begin_stream_work(stream, per_thread); \
    const CUresult result = function args;                                                   \
    gpushim::router::end_stream_work(work);                                                  \
    return result;                                                                           \
  }
// Both variants: the default one (stream 0 = the legacy stream) and _ptsz (stream 0 = the calling
// thread's per-thread default stream).
#define GPUSHIM_WORK_ENTRIES(name, version, symbol, params, args, stream) \
  GPUSHIM_WORK_ENTRY(symbol, false, params, args, stream)                  \
  GPUSHIM_WORK_ENTRY(symbol##_ptsz, true, params, args, stream)

#include "shim/work_submission_entries.inc"
#undef GPUSHIM_WORK_ENTRIES
// The synchronous ones: the default variant queues on the legacy stream, _ptds on the calling thread's
// per-thread default stream (stream 0 of a per-thread variant).
#define GPUSHIM_SYNC_WORK_ENTRIES(name, version, symbol, params, args)        \
  GPUSHIM_WORK_ENTRY(symbol, false, params, args, CU_STREAM_LEGACY)           \
  GPUSHIM_WORK_ENTRY(symbol##_ptds, true, params, args, static_cast<CUstream>(nullptr))
#include "shim/synchronous_work_entries.inc"
#undef GPUSHIM_SYNC_WORK_ENTRIES
#undef GPUSHIM_WORK_ENTRY
