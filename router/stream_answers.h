// What fence queries found on each active stream, so that no event is asked twice.
//
// A stream runs its work in order, so events recorded on it complete in the order they were recorded:
// once a query finds one complete, every event recorded there before it is complete too. Each event of
// an active-stream fence carries its stream's registration (its serial) and its place in the record
// order (FenceEvent::sequence, router/free_fence_queue.h). With a stream per thread, consecutive fences
// hold mostly the same shared events, and each fence asked the driver about each of them again
// (router/cuda_fence_events.h).
//
// Only the streams of the latest active-stream walk are kept: an answer forgotten costs one query later,
// never a wrong answer. Not thread-safe: only the fence queue's driver-lock holder records device fences
// and queries them.
#pragma once

#include <cstdint>
#include <vector>

namespace gpushim {

class StreamAnswers {
 public:
  // A walk of the active streams begins: each stream it visits is kept, the others are forgotten at
  // forget_unvisited().
  void begin_walk() noexcept {
    for (Answer& answer : answers_) answer.visited = false;
  }
  void visit(std::uint64_t serial) noexcept {
    if (Answer* answer = find(serial)) {
      answer->visited = true;
      return;
    }
    try {
      answers_.push_back({serial, 0, true});
    } catch (...) {
      // No host memory: this stream's events are each asked, which is only slower.
    }
  }
  void forget_unvisited() noexcept {
    std::size_t kept = 0;
    for (const Answer& answer : answers_)
      if (answer.visited) answers_[kept++] = answer;
    answers_.resize(kept);
  }

  // True when the event recorded `sequence`-th on stream `serial` is known complete. Serial 0 or
  // sequence 0: an event of unknown place, never known.
  bool known_complete(std::uint64_t serial, std::uint64_t sequence) const noexcept {
    if (serial == 0 || sequence == 0) return false;
    for (const Answer& answer : answers_)
      if (answer.serial == serial) return answer.completed_through >= sequence;
    return false;
  }
  // A query found that event complete (or its context dead, which runs no more work either).
  void found_complete(std::uint64_t serial, std::uint64_t sequence) noexcept {
    if (serial == 0) return;
    if (Answer* answer = find(serial))
      if (sequence > answer->completed_through) answer->completed_through = sequence;
  }

  std::size_t streams() const noexcept { return answers_.size(); }
  void clear() noexcept { answers_.clear(); }

 private:
  struct Answer {
    std::uint64_t serial;
    std::uint64_t completed_through;  // the newest sequence found complete on the stream (0: none)
    bool visited;
  };
  Answer* find(std::uint64_t serial) noexcept {
    for (Answer& answer : answers_)
      if (answer.serial == serial) return &answer;
    return nullptr;
  }

  std::vector<Answer> answers_;
};

}  // namespace gpushim
