// Where a stream's probe can be read without the driver: words of mapped host memory that the GPU
// writes (cuStreamWriteValue32) once the stream's work queued before the write is done, and that a
// poll reads with a load (router/stream_activity.h says what a probe is for).
//
// Why: a poll that asked the probe's event (cuEventQuery) cost 0.2-0.3 us while the stream worked and
// 1.5 us when it answered "done" (H200, driver 580, fourteenth session). That answer comes once per
// burst of side-stream work, in a free: with a launch every 64 pairs it was one thread's p99 pair
// (2.0-3.1 us). With a stream per thread, 16 threads' polls made ~1 M such calls a second beside the
// program's launches. A load costs neither.
//
// A word belongs to one StreamRecord for good (records are recycled, the word with them): its value
// only grows, so a write still queued from an earlier probe never matches a later one.
#pragma once

#include <cstdint>

#include <cuda.h>

#pragma GCC visibility push(hidden)  // router/router_state.h says why

namespace gpushim::router {

struct ProbeWord {
  std::uint32_t* host = nullptr;  // nullptr: none (the driver refused): the probe is an event
  CUdeviceptr device = 0;         // the address the GPU writes, in `context`
  CUcontext context = nullptr;
  std::uint32_t value = 0;        // the last value queued
};

// Gives `word` a word (first use) and its device address in `context`, which is current. False when
// the driver refused (no pinned memory, no mapping): the caller probes with an event. Activity lock
// held (router/stream_activity.cpp).
bool prepare_probe_word(ProbeWord& word, CUcontext context) noexcept;
// A probe takes two steps, so that the write can be queued without the activity lock: the word's next
// value is reserved under it (the probe can be published at once: its word reads "not landed" until
// the write lands), then the write of that value is queued on `stream`, after its work so far. The
// write is false when refused; from the first refusal on, every probe is an event (prepare_probe_word
// says no). A reserved value that is never written costs nothing: values only need to grow.
inline std::uint32_t reserve_probe_value(ProbeWord& word) noexcept { return ++word.value; }
bool write_probe_value(CUstream stream, CUdeviceptr device, std::uint32_t value) noexcept;
// True once the write queued last has landed.
inline bool probe_word_written(const ProbeWord& word) noexcept {
  return __atomic_load_n(word.host, __ATOMIC_ACQUIRE) == word.value;
}
// The child of a fork maps nothing of the parent's: forget the pages (they leak, a page per 1024
// streams ever tracked).
void reset_probe_words_after_fork() noexcept;

}  // namespace gpushim::router

#pragma GCC visibility pop
