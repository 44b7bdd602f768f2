#include "tracing/oom_dump_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "config/settings.h"

namespace gpushim::tracing {

bool OomDumpWriter::open(const char* path_pattern, std::uint64_t start_ns, int stack_depth,
                         std::uint32_t flags) noexcept {
  if (fd_ >= 0 || !expand_trace_path(path_pattern, path_, sizeof path_)) return false;
  fd_ = ::open(path_, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return false;
  start_ns_ = start_ns;
  stack_depth_ = stack_depth < 0 ? 0 : (stack_depth > kMaxTraceStack ? kMaxTraceStack : stack_depth);
  used_ = sizeof(format::ChunkHeader);
  records_ = 0;
  ok_ = write_trace_header(fd_, start_ns, stack_depth_, flags | format::kFlagOomDump);
  if (ok_ && stack_depth_ > 0) write_trace_module_map(fd_);
  return ok_;
}

void OomDumpWriter::flush() noexcept {
  const std::size_t payload = used_ - sizeof(format::ChunkHeader);
  if (payload && fd_ >= 0 && !write_trace_chunk(fd_, buffer_, payload, 0, records_)) ok_ = false;
  used_ = sizeof(format::ChunkHeader);
  records_ = 0;
}

void OomDumpWriter::append(const void* record, std::size_t bytes, const std::uint64_t* frames,
                           int frame_count) noexcept {
  if (fd_ < 0) return;
  const std::size_t need = bytes + 8 * std::size_t(frame_count);
  if (used_ + need > kBufferBytes) flush();
  std::memcpy(buffer_ + used_, record, bytes);
  if (frame_count) std::memcpy(buffer_ + used_ + bytes, frames, 8 * std::size_t(frame_count));
  used_ += need;
  ++records_;
}

void OomDumpWriter::device(format::DeviceStateRecord state) noexcept {
  state.type = std::uint8_t(format::RecordType::device_state);
  append(&state, sizeof state, nullptr, 0);
}

void OomDumpWriter::event(EventKind kind, const DumpBlock& block) noexcept {
  format::EventRecord rec{};
  rec.type = std::uint8_t(format::RecordType::event);
  rec.kind = std::uint8_t(kind);
  rec.backend = std::uint8_t(block.backend);
  int frames = block.frames ? block.frame_count : 0;
  if (frames > stack_depth_) frames = stack_depth_;
  if (frames < 0) frames = 0;
  rec.frame_count = std::uint8_t(frames);
  rec.device = block.device;
  // A block from before the time was kept (0) reads as allocated when gpushim started.
  rec.time_ns = block.time_ns ? block.time_ns : start_ns_;
  rec.stream = block.stream;
  rec.address = block.address;
  rec.size = block.size;
  append(&rec, sizeof rec, block.frames, frames);
}

void OomDumpWriter::block(const DumpBlock& live) noexcept {
  event(live.async ? EventKind::alloc_async : EventKind::alloc, live);
}

void OomDumpWriter::failure(const DumpBlock& request) noexcept { event(EventKind::out_of_memory, request); }

bool OomDumpWriter::close() noexcept {
  if (fd_ < 0) return false;
  format::EndRecord end{};
  end.type = std::uint8_t(format::RecordType::end);
  append(&end, sizeof end, nullptr, 0);
  flush();
  if (::close(fd_) != 0) ok_ = false;
  fd_ = -1;
  return ok_;
}

}  // namespace gpushim::tracing
