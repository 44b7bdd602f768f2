// The device memory a process holds, sampled from NVML while a benchmark cell runs, so every rate comes
// with the memory that bought it, measured the same way for every allocator (gpushim, the driver's
// pool, cudaMalloc). Why NVML and not cudaMemGetInfo: under gpushim cuMemGetInfo is gpushim's own
// answer (a GPUSHIM_LIMIT cap is reported as the total), while NVML asks the kernel driver.
//
// What is measured: the device's used memory minus its value when the sampler was made (after the
// program created its context), every kSampleInterval on a thread of its own, the maximum over a
// window. It counts every process on the device, so it is this program's only while nothing else runs
// there (the lent GPU machine). libnvidia-ml.so.1 is opened at run time: where it is missing, or the
// device is not found, available() is false and nothing is sampled.
#pragma once

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

class DeviceMemorySampler {
 public:
  // 5 ms: a sample is one ioctl (~10-30 us); more often would take a core from a 16-thread cell.
  static constexpr std::chrono::milliseconds kSampleInterval{5};

  explicit DeviceMemorySampler(int cuda_device) {
    library_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (library_ == nullptr) return;
    using Init = int (*)();
    using ByBusId = int (*)(const char*, void**);
    const auto init = reinterpret_cast<Init>(dlsym(library_, "nvmlInit_v2"));
    const auto by_bus_id = reinterpret_cast<ByBusId>(dlsym(library_, "nvmlDeviceGetHandleByPciBusId_v2"));
    memory_info_ = reinterpret_cast<MemoryInfo>(dlsym(library_, "nvmlDeviceGetMemoryInfo"));
    char bus_id[32] = {};
    // NVML numbers devices its own way (CUDA_VISIBLE_DEVICES renumbers CUDA's), so by PCI bus id.
    if (!init || !by_bus_id || !memory_info_ || init() != 0 ||
        cudaDeviceGetPCIBusId(bus_id, sizeof bus_id, cuda_device) != cudaSuccess || by_bus_id(bus_id, &device_) != 0)
      return;
    baseline_ = used_bytes();
    available_ = baseline_ != kUnknown;
  }
  ~DeviceMemorySampler() { stop(); }
  DeviceMemorySampler(const DeviceMemorySampler&) = delete;
  DeviceMemorySampler& operator=(const DeviceMemorySampler&) = delete;

  bool available() const { return available_; }

  // Starts a window: samples until stop(), which returns the window's peak above the baseline in bytes
  // (0 when unavailable).
  void start() {
    if (!available_ || running_.exchange(true)) return;
    peak_ = 0;
    thread_ = std::thread([this] {
      do {
        sample();
        std::this_thread::sleep_for(kSampleInterval);
      } while (running_.load(std::memory_order_relaxed));
    });
  }
  // The device's used memory now, above the baseline (negative: below it); 0 when unavailable.
  std::int64_t used_now() const {
    const std::uint64_t used = available_ ? used_bytes() : kUnknown;
    return used == kUnknown ? 0 : static_cast<std::int64_t>(used) - static_cast<std::int64_t>(baseline_);
  }

  std::uint64_t stop() {
    if (!running_.exchange(false)) return 0;
    thread_.join();
    sample();
    return peak_;
  }

 private:
  static constexpr std::uint64_t kUnknown = ~std::uint64_t{0};
  struct Memory {  // nvmlMemory_t
    unsigned long long total, free, used;
  };
  using MemoryInfo = int (*)(void*, Memory*);

  std::uint64_t used_bytes() const {
    Memory m{};
    return memory_info_(device_, &m) == 0 ? m.used : kUnknown;
  }
  void sample() {
    const std::uint64_t used = used_bytes();
    if (used != kUnknown && used > baseline_) peak_ = std::max<std::uint64_t>(peak_, used - baseline_);
  }

  void* library_ = nullptr;  // never closed: NVML may keep threads of its own
  void* device_ = nullptr;
  MemoryInfo memory_info_ = nullptr;
  std::uint64_t baseline_ = 0;
  std::uint64_t peak_ = 0;  // written by the sampling thread, read after join
  bool available_ = false;
  std::atomic<bool> running_{false};
  std::thread thread_;
};
