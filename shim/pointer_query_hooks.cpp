// cuPointerGetAttribute(s) and cuMemGetAddressRange for gpushim blocks: the block's own start and
// requested size, as cuMemAlloc memory would report. The driver alone would report the whole range
// one cuMemSetAccess covered (docs/measured-facts.md: 4 MiB for a pointer in the second of two mapped granules),
// which breaks programs that find an allocation's extent this way (PyTorch's IPC does).
//
// The real driver always answers first, so errors, contexts and every other attribute are exactly the
// driver's; only RANGE_START_ADDR / RANGE_SIZE (and the address range) are rewritten, and only for
// pointers the router says gpushim owns. Exported through shim/exports.map; rows in
// driver_substitutions.cpp (docs/ecosystem.md).
//
// Spilled blocks (GPUSHIM_SPILL=host) live in host memory, and the driver calls such memory
// CU_MEMORYTYPE_HOST (measured on the H100). The program asked cudaMalloc for device memory, and
// programs branch on this answer (cudaPointerGetAttributes' type: which copy kind to use, whether a
// pointer may be handed to a kernel, PyTorch's checks of where a tensor's data lives); the block serves
// every device use. So for a spilled block the location attributes answer as for device memory:
// MEMORY_TYPE DEVICE, DEVICE_ORDINAL its device, DEVICE_POINTER itself, and no host pointer
// (docs/host-spill.md). Without GPUSHIM_SPILL nothing of this runs.
#include <cuda.h>

#include "config/settings.h"
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

bool is_location_attribute(CUpointer_attribute attribute) noexcept {
  return attribute == CU_POINTER_ATTRIBUTE_MEMORY_TYPE || attribute == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL ||
         attribute == CU_POINTER_ATTRIBUTE_DEVICE_POINTER || attribute == CU_POINTER_ATTRIBUTE_HOST_POINTER;
}

// The block that holds `ptr` when it is a spilled one; false otherwise (and always without spilling).
bool find_spilled_block(CUdeviceptr ptr, router::BlockInfo* block) noexcept {
  return gpushim::settings().spill_host && router::find_block(ptr, block) && block->spilled;
}

// Writes what device memory would answer for a location attribute of a spilled block. False for a
// host pointer, which device memory does not have.
bool answer_as_device_memory(CUpointer_attribute attribute, void* data, CUdeviceptr ptr,
                             const router::BlockInfo& block) noexcept {
  switch (attribute) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
      *static_cast<unsigned int*>(data) = CU_MEMORYTYPE_DEVICE;
      return true;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
      *static_cast<int*>(data) = block.device;
      return true;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
      *static_cast<CUdeviceptr*>(data) = ptr;
      return true;
    default:
      return false;
  }
}

}  // namespace

extern "C" {

CUresult CUDAAPI cuPointerGetAttribute(void* data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  const auto& driver = real_driver();
  if (driver.cuPointerGetAttribute == nullptr) return CUDA_ERROR_NOT_INITIALIZED;
  const CUresult result = driver.cuPointerGetAttribute(data, attribute, ptr);
  router::BlockInfo spilled;
  if (data != nullptr && is_location_attribute(attribute) && find_spilled_block(ptr, &spilled))
    return answer_as_device_memory(attribute, data, ptr, spilled) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
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
  bool asks_range = false, asks_location = false;
  for (unsigned int i = 0; i < count; ++i) {
    asks_range |= is_range_attribute(attributes[i]);
    asks_location |= is_location_attribute(attributes[i]);
  }
  router::BlockInfo spilled;
  if (asks_location && find_spilled_block(ptr, &spilled)) {
    for (unsigned int i = 0; i < count; ++i) {
      if (data[i] == nullptr || !is_location_attribute(attributes[i])) continue;
      // This call answers NULL where an attribute does not apply, so: no host pointer.
      if (!answer_as_device_memory(attributes[i], data[i], ptr, spilled)) *static_cast<void**>(data[i]) = nullptr;
    }
  }
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
