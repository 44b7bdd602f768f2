// cuPointerGetAttribute(s) and cuMemGetAddressRange for gpushim blocks: the block's own start and
// requested size, as cuMemAlloc memory would report. The driver alone would report the whole range
// one cuMemSetAccess covered (docs/measured-facts.md: 4 MiB for a pointer in the second of two mapped granules),
// which breaks programs that find an allocation's extent this way (PyTorch's IPC does).
//
// The real driver always answers first, so errors, contexts and every other attribute are exactly the
// driver's; only RANGE_START_ADDR / RANGE_SIZE (and the address range) are rewritten, and only for
// pointers the router says gpushim owns. Exported through shim/exports.map; rows in
// driver_substitutions.cpp (docs/ecosystem.md).
#include <cuda.h>

#include "driver/real_driver.h"
#include "router/router.h"

#define GPUSHIM_EXPORT __attribute__((visibility("default")))

extern "C" {
GPUSHIM_EXPORT CUresult CUDAAPI cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuPointerGetAttributes(unsigned int count, CUpointer_attribute* attributes,
                                                       void** data, CUdeviceptr ptr);
GPUSHIM_EXPORT CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr ptr);
}

namespace {

using gpushim::real_driver;
namespace router = gpushim::router;

// Writes the block's value of a range attribute into `data`; false for every other attribute.
bool answer_range_attribute(CUpointer_attribute attribute, void* data, const router::BlockInfo& block) noexcept {
  if (data == nullptr) return false;
  switch (attribute) {
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
      *static_cast<CUdeviceptr*>(data) = block.base;
      return true;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
      *static_cast<size_t*>(data) = block.size;
      return true;
    default:
      return false;
  }
}

bool is_range_attribute(CUpointer_attribute attribute) noexcept {
  return attribute == CU_POINTER_ATTRIBUTE_RANGE_START_ADDR || attribute == CU_POINTER_ATTRIBUTE_RANGE_SIZE;
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  const auto& driver = real_driver();
  if (driver.cuPointerGetAttribute == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuPointerGetAttribute(data, attribute, ptr);
  if (result != CUDA_SUCCESS || !is_range_attribute(attribute)) return result;
  router::BlockInfo block;
  if (router::find_block(ptr, &block)) answer_range_attribute(attribute, data, block);
  return result;
}

CUresult CUDAAPI cuPointerGetAttributes(unsigned int count, CUpointer_attribute* attributes, void** data,
                                        CUdeviceptr ptr) {
  const auto& driver = real_driver();
  if (driver.cuPointerGetAttributes == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuPointerGetAttributes(count, attributes, data, ptr);
  if (result != CUDA_SUCCESS || attributes == nullptr || data == nullptr) return result;
  bool asks_range = false;
  for (unsigned int i = 0; i < count; ++i) asks_range |= is_range_attribute(attributes[i]);
  if (!asks_range) return result;
  router::BlockInfo block;
  if (!router::find_block(ptr, &block)) return result;
  for (unsigned int i = 0; i < count; ++i) answer_range_attribute(attributes[i], data[i], block);
  return result;
}

CUresult CUDAAPI cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* size, CUdeviceptr ptr) {
  const auto& driver = real_driver();
  if (driver.cuMemGetAddressRange == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuMemGetAddressRange(base, size, ptr);
  if (result != CUDA_SUCCESS) return result;
  router::BlockInfo block;
  if (router::find_block(ptr, &block)) {
    if (base != nullptr) *base = block.base;
    if (size != nullptr) *size = block.size;
  }
  return result;
}

}  // extern "C"
