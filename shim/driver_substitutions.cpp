// The one table of entry points gpushim serves in place of the driver.
//
// A row holds what cuGetProcAddress is asked (base name, first CUDA version whose prototype the row's
// function has, per cudaTypedefs.h's PFN_<name>_v<version>) and what dlsym is asked (the exact symbol
// with that prototype). Below a row's version the driver hands out an older prototype (cuMemAlloc at
// 2000 takes 32-bit sizes, cuStreamBeginCapture at 10000 has no mode argument), so those lookups keep
// the driver's own function: substituting a function with another prototype corrupts the program.
#include "shim/driver_substitutions.h"

#include <cstring>
#include <iterator>

#include "driver/real_driver.h"
#include "shim/driver_entry_points.h"

// The work-submission hooks (shim/work_submission_hooks.cpp); cuda.h declares only the default variants.
#define GPUSHIM_WORK_ENTRIES(name, version, symbol, params, args, stream) \
  extern "C" CUresult CUDAAPI symbol params;                             \
  extern "C" CUresult CUDAAPI symbol##_ptsz params;
#include "shim/work_submission_entries.inc"
#undef GPUSHIM_WORK_ENTRIES
#define GPUSHIM_SYNC_WORK_ENTRIES(name, version, symbol, params, args) \
  extern "C" CUresult CUDAAPI symbol params;                          \
  extern "C" CUresult CUDAAPI symbol##_ptds params;
#include "shim/synchronous_work_entries.inc"
#undef GPUSHIM_SYNC_WORK_ENTRIES

namespace gpushim::shim {
namespace {

struct Substitution {
  const char* name;                  // as cuGetProcAddress is asked: "cuMemAlloc"
  int first_cuda_version;            // the version that introduced this prototype
  void* function;                    // for default and legacy-stream lookups
  void* per_thread_function;         // for CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM lookups
  const char* symbol;                // the exported symbol with function's prototype
  const char* per_thread_symbol;     // and with per_thread_function's, or nullptr when it is the same
};

template <typename Function>
void* address(Function* function) {
  return reinterpret_cast<void*>(function);
}

// For one name, the newer prototype comes first: lookup takes the first row whose version is reached.
// A function-local static: the addresses go through reinterpret_cast, which is not a constant
// expression, so a namespace-scope table would be filled by a constructor, and dlsym may be called
// (from another library's constructor) before ours runs. Here it is filled on first use, under the
// compiler's thread-safe guard, which neither allocates nor calls back into dlsym.
struct SubstitutionRows {
  const Substitution* first;
  const Substitution* last;
  const Substitution* begin() const { return first; }
  const Substitution* end() const { return last; }
};

SubstitutionRows substitution_table() noexcept {
  static const Substitution substitutions[] = {
    {"cuMemAlloc", 3020, address(cuMemAlloc_v2), address(cuMemAlloc_v2), "cuMemAlloc_v2", nullptr},
    {"cuMemFree", 3020, address(cuMemFree_v2), address(cuMemFree_v2), "cuMemFree_v2", nullptr},
    {"cuMemAllocPitch", 3020, address(cuMemAllocPitch_v2), address(cuMemAllocPitch_v2), "cuMemAllocPitch_v2",
     nullptr},
    {"cuMemGetInfo", 3020, address(cuMemGetInfo_v2), address(cuMemGetInfo_v2), "cuMemGetInfo_v2", nullptr},
    {"cuMemAllocAsync", 11020, address(cuMemAllocAsync), address(cuMemAllocAsync_ptsz), "cuMemAllocAsync",
     "cuMemAllocAsync_ptsz"},
    {"cuMemFreeAsync", 11020, address(cuMemFreeAsync), address(cuMemFreeAsync_ptsz), "cuMemFreeAsync",
     "cuMemFreeAsync_ptsz"},
    {"cuStreamCreate", 2000, address(cuStreamCreate), address(cuStreamCreate), "cuStreamCreate", nullptr},
    {"cuStreamCreateWithPriority", 5050, address(cuStreamCreateWithPriority), address(cuStreamCreateWithPriority),
     "cuStreamCreateWithPriority", nullptr},
    {"cuStreamDestroy", 4000, address(cuStreamDestroy_v2), address(cuStreamDestroy_v2), "cuStreamDestroy_v2",
     nullptr},
    {"cuStreamBeginCapture", 10010, address(cuStreamBeginCapture_v2), address(cuStreamBeginCapture_v2_ptsz),
     "cuStreamBeginCapture_v2", "cuStreamBeginCapture_v2_ptsz"},
    {"cuStreamBeginCaptureToGraph", 12030, address(cuStreamBeginCaptureToGraph),
     address(cuStreamBeginCaptureToGraph_ptsz), "cuStreamBeginCaptureToGraph", "cuStreamBeginCaptureToGraph_ptsz"},
    {"cuStreamEndCapture", 10000, address(cuStreamEndCapture), address(cuStreamEndCapture_ptsz),
     "cuStreamEndCapture", "cuStreamEndCapture_ptsz"},
    {"cuPointerGetAttribute", 4000, address(cuPointerGetAttribute), address(cuPointerGetAttribute),
     "cuPointerGetAttribute", nullptr},
    {"cuPointerGetAttributes", 7000, address(cuPointerGetAttributes), address(cuPointerGetAttributes),
     "cuPointerGetAttributes", nullptr},
    {"cuMemGetAddressRange", 3020, address(cuMemGetAddressRange_v2), address(cuMemGetAddressRange_v2),
     "cuMemGetAddressRange_v2", nullptr},
    {"cuIpcGetMemHandle", 4010, address(cuIpcGetMemHandle), address(cuIpcGetMemHandle), "cuIpcGetMemHandle",
     nullptr},
    {"cuIpcOpenMemHandle", 11000, address(cuIpcOpenMemHandle_v2), address(cuIpcOpenMemHandle_v2),
     "cuIpcOpenMemHandle_v2", nullptr},
    {"cuIpcOpenMemHandle", 4010, address(gpushim_cuIpcOpenMemHandle_v1), address(gpushim_cuIpcOpenMemHandle_v1),
     "cuIpcOpenMemHandle", nullptr},
    {"cuIpcCloseMemHandle", 4010, address(cuIpcCloseMemHandle), address(cuIpcCloseMemHandle),
     "cuIpcCloseMemHandle", nullptr},
    {"cuCtxEnablePeerAccess", 4000, address(cuCtxEnablePeerAccess), address(cuCtxEnablePeerAccess),
     "cuCtxEnablePeerAccess", nullptr},
    {"cuCtxDisablePeerAccess", 4000, address(cuCtxDisablePeerAccess), address(cuCtxDisablePeerAccess),
     "cuCtxDisablePeerAccess", nullptr},
    {"cuMemPoolSetAccess", 11020, address(cuMemPoolSetAccess), address(cuMemPoolSetAccess), "cuMemPoolSetAccess",
     nullptr},
    // Work on a stream (shim/work_submission_hooks.cpp): which streams carry work decides free-safety.
#define GPUSHIM_WORK_ENTRIES(name, version, symbol, params, args, stream) \
  {#name, version, address(symbol), address(symbol##_ptsz), #symbol, #symbol "_ptsz"},
#include "shim/work_submission_entries.inc"
#undef GPUSHIM_WORK_ENTRIES
#define GPUSHIM_SYNC_WORK_ENTRIES(name, version, symbol, params, args) \
  {#name, version, address(symbol), address(symbol##_ptds), #symbol, #symbol "_ptds"},
#include "shim/synchronous_work_entries.inc"
#undef GPUSHIM_SYNC_WORK_ENTRIES
    // Context synchronizations (shim/synchronize_hooks.cpp): where the router's idle checks also run.
#define GPUSHIM_SYNCHRONIZE_ENTRY(name, version, symbol, params, args, context) \
  {#name, version, address(symbol), address(symbol), #symbol, nullptr},
#include "shim/synchronize_entries.inc"
#undef GPUSHIM_SYNCHRONIZE_ENTRY
    // Asked for itself (the runtime does: docs/measured-facts.md), so every later lookup also goes through us.
    {"cuGetProcAddress", 12000, address(cuGetProcAddress_v2), address(cuGetProcAddress_v2), "cuGetProcAddress_v2",
     nullptr},
    {"cuGetProcAddress", 11030, address(gpushim_cuGetProcAddress_v1), address(gpushim_cuGetProcAddress_v1),
     "cuGetProcAddress", nullptr},
  };
  return {std::begin(substitutions), std::end(substitutions)};
}

bool is_driver_name(const char* symbol) noexcept { return symbol[0] == 'c' && symbol[1] == 'u'; }

const Substitution* row_for(const char* name, int cuda_version) noexcept {
  for (const Substitution& row : substitution_table()) {
    if (std::strcmp(row.name, name) == 0 && cuda_version >= row.first_cuda_version) return &row;
  }
  return nullptr;
}

}  // namespace

void* substitute_for_proc_address(const char* symbol, int cuda_version, cuuint64_t flags,
                                  void* driver_function) noexcept {
  if (driver_function == nullptr || symbol == nullptr || !is_driver_name(symbol)) return driver_function;
  const Substitution* row = row_for(symbol, cuda_version);
  if (row == nullptr) return driver_function;
  // A program built against a newer CUDA than gpushim may ask for a prototype we have never seen.
  // Substitute only if the driver answers with the very function it gives at our own version.
  if (cuda_version > CUDA_VERSION) {
    const RealDriver& driver = real_driver();
    void* known = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (driver.cuGetProcAddress == nullptr ||
        driver.cuGetProcAddress(symbol, &known, CUDA_VERSION, flags, &status) != CUDA_SUCCESS ||
        known != driver_function) {
      return driver_function;
    }
  }
  return (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? row->per_thread_function : row->function;
}

void* substitute_for_symbol(const char* symbol) noexcept {
  if (!is_driver_name(symbol)) return nullptr;
  for (const Substitution& row : substitution_table()) {
    if (std::strcmp(row.symbol, symbol) == 0) return row.function;
    if (row.per_thread_symbol != nullptr && std::strcmp(row.per_thread_symbol, symbol) == 0) {
      return row.per_thread_function;
    }
  }
  return nullptr;
}

}  // namespace gpushim::shim
