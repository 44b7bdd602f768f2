// The trace recorder: per-thread buffers filled on the hot path without a lock, flushed as whole chunks
// (one write(2) under the file lock) when full, at thread exit and at process exit. Nothing here
// symbolises or formats: frames are raw return addresses, and the module map written beside them lets
// the tool resolve them later (heaptrack's split). Layout: tracing/trace_format.h.
#include "tracing/trace_recorder.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>

#include "config/settings.h"
#include "diagnostics/hot_tls.h"
#include "diagnostics/log.h"
#include "diagnostics/monotonic_clock.h"
#include "tracing/stack_unwinder.h"
#include "tracing/trace_format.h"

namespace gpushim::tracing {
namespace detail {
std::atomic<bool> g_enabled{false};
}  // namespace detail

namespace {

namespace fmt = format;

// 64 KiB holds ~1600 events without stacks: one write(2) (~5 us) per 1600 events keeps the flush
// share of the per-event cost near 3 ns, and a crash loses at most that many events per thread.
constexpr std::size_t kBufferBytes = 64 * 1024;
static_assert(kMaxTraceStack <= std::numeric_limits<decltype(fmt::EventRecord::frame_count)>::max(),
              "a record stores its frame count in one byte");

struct ThreadBuffer {
  // Held by the owning thread while it appends, and by a flusher (stop/flush at exit) that empties the
  // buffer of another thread. The owner almost never finds it taken, so this costs one uncontended
  // atomic exchange per event, not a lock all threads fight over.
  std::atomic<bool> busy{false};
  bool owned = false;           // a live thread appends here (registry mutex)
  std::uint32_t thread_id = 0;
  std::uint32_t records = 0;
  std::size_t used = sizeof(fmt::ChunkHeader);  // the chunk header is filled in at flush
  ThreadBuffer* next = nullptr;
  alignas(8) unsigned char data[kBufferBytes];
};

std::mutex g_file_mutex;             // one chunk at a time into the file
int g_fd = -1;                       // g_file_mutex
int g_stack_depth = 0;
unsigned long long g_modules_written_adds = 0;  // dlpi_adds when the module map was last written

std::mutex g_registry_mutex;         // cold: taken once per thread
std::atomic<ThreadBuffer*> g_buffers{nullptr};
pthread_key_t g_thread_exit_key;
bool g_thread_exit_key_made = false;  // g_registry_mutex

GPUSHIM_HOT_TLS ThreadBuffer* t_buffer = nullptr;  // read on every record (hot_tls.h)

// Events are stamped with the library's one clock (diagnostics/monotonic_clock.h); the wall clock is
// read once, for the header, so a reader can place the trace in time.
std::uint64_t realtime_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);  // vDSO: no system call
  return std::uint64_t(ts.tv_sec) * 1000000000ull + std::uint64_t(ts.tv_nsec);
}

bool write_all(int fd, const void* data, std::size_t bytes) noexcept {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= std::size_t(n);
  }
  return true;
}

// g_file_mutex held.
void write_chunk_locked(unsigned char* chunk, std::size_t payload_bytes, std::uint32_t thread_id,
                        std::uint32_t records) noexcept {
  if (g_fd < 0 || payload_bytes == 0) return;
  if (!write_trace_chunk(g_fd, chunk, payload_bytes, thread_id, records)) {
    static bool once = false;
    log_once(&once, LogLevel::warn, "trace: writing the trace failed (%s); recording stops",
             std::strerror(errno));
    detail::g_enabled.store(false, std::memory_order_relaxed);
  }
}

// ---- module map (cold: at start, and at a flush after the program loaded new libraries) ----

struct ModuleChunk {
  unsigned char data[kBufferBytes];
  std::size_t used = sizeof(fmt::ChunkHeader);
  std::uint32_t records = 0;
  int fd = -1;  // -1: the recording's file, under g_file_mutex
  void flush() noexcept {
    if (fd < 0) write_chunk_locked(data, used - sizeof(fmt::ChunkHeader), 0, records);
    else write_trace_chunk(fd, data, used - sizeof(fmt::ChunkHeader), 0, records);
    used = sizeof(fmt::ChunkHeader);
    records = 0;
  }
};

std::size_t find_build_id(const dl_phdr_info* info, const unsigned char** id) noexcept {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    auto p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
    const unsigned char* end = p + ph.p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      auto note = reinterpret_cast<const ElfW(Nhdr)*>(p);
      const unsigned char* name = p + sizeof(ElfW(Nhdr));
      const unsigned char* desc = name + ((note->n_namesz + 3) & ~3u);  // ELF notes are 4-aligned
      if (note->n_type == NT_GNU_BUILD_ID && note->n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0 &&
          desc + note->n_descsz <= end) {
        *id = desc;
        return note->n_descsz > 255 ? 255 : note->n_descsz;
      }
      p = desc + ((note->n_descsz + 3) & ~3u);
    }
  }
  return 0;
}

int append_module(dl_phdr_info* info, size_t, void* user) noexcept {
  auto* chunk = static_cast<ModuleChunk*>(user);
  std::uint64_t lo = ~0ull, hi = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    std::uint64_t start = info->dlpi_addr + ph.p_vaddr;
    if (start < lo) lo = start;
    if (start + ph.p_memsz > hi) hi = start + ph.p_memsz;
  }
  if (hi == 0) return 0;
  char exe[4096];
  const char* path = info->dlpi_name ? info->dlpi_name : "";
  if (path[0] == '\0') {  // the main program: the loader gives no name
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    path = exe;
  }
  std::size_t path_bytes = std::strlen(path);
  if (path_bytes > 4095) path_bytes = 4095;
  const unsigned char* build_id = nullptr;
  std::size_t id_bytes = find_build_id(info, &build_id);
  std::size_t need = sizeof(fmt::ModuleRecord) + fmt::pad8(path_bytes + id_bytes);
  if (chunk->used + need > sizeof chunk->data) chunk->flush();
  fmt::ModuleRecord rec{};
  rec.type = std::uint8_t(fmt::RecordType::module);
  rec.build_id_bytes = std::uint8_t(id_bytes);
  rec.path_bytes = std::uint16_t(path_bytes);
  rec.base = info->dlpi_addr;
  rec.end = hi;
  unsigned char* out = chunk->data + chunk->used;
  std::memset(out, 0, need);
  std::memcpy(out, &rec, sizeof rec);
  std::memcpy(out + sizeof rec, path, path_bytes);
  if (id_bytes) std::memcpy(out + sizeof rec + path_bytes, build_id, id_bytes);
  chunk->used += need;
  chunk->records++;
  return 0;
}

int read_adds(dl_phdr_info* info, size_t, void* user) noexcept {
  *static_cast<unsigned long long*>(user) = info->dlpi_adds;
  return 1;  // the counter is the same in every callback: stop after the first
}

unsigned long long loader_adds() noexcept {
  unsigned long long adds = 0;
  dl_iterate_phdr(&read_adds, &adds);
  return adds;
}

// g_file_mutex held. Writes the whole module map when libraries were loaded since the last time; the
// reader keeps every module it has seen, so rewriting the old ones is harmless.
void write_modules_if_changed_locked() noexcept {
  if (g_stack_depth == 0 || g_fd < 0) return;
  unsigned long long adds = loader_adds();
  if (adds == g_modules_written_adds) return;
  g_modules_written_adds = adds;
  static ModuleChunk chunk;  // 64 KiB; not on the stack of a program thread
  dl_iterate_phdr(&append_module, &chunk);
  chunk.flush();
}

// ---- per-thread buffers ----

// b->busy held.
void flush_buffer(ThreadBuffer* b) noexcept {
  std::size_t payload = b->used - sizeof(fmt::ChunkHeader);
  if (payload == 0) return;
  {
    std::lock_guard<std::mutex> lock(g_file_mutex);
    write_modules_if_changed_locked();
    write_chunk_locked(b->data, payload, b->thread_id, b->records);
  }
  b->used = sizeof(fmt::ChunkHeader);
  b->records = 0;
}

void lock_buffer(ThreadBuffer* b) noexcept {
  while (b->busy.exchange(true, std::memory_order_acquire)) {
    // only a flusher at exit or stop() holds another thread's buffer, and briefly
  }
}
void unlock_buffer(ThreadBuffer* b) noexcept { b->busy.store(false, std::memory_order_release); }

void on_thread_exit(void* arg) noexcept {
  auto* b = static_cast<ThreadBuffer*>(arg);
  lock_buffer(b);
  flush_buffer(b);
  unlock_buffer(b);
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  b->owned = false;
  t_buffer = nullptr;
}

ThreadBuffer* acquire_buffer() noexcept {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  ThreadBuffer* b = g_buffers.load(std::memory_order_acquire);
  while (b && b->owned) b = b->next;  // reuse the buffer of an exited thread: no growth with churn
  if (!b) {
    b = new (std::nothrow) ThreadBuffer;
    if (!b) return nullptr;
    b->next = g_buffers.load(std::memory_order_relaxed);
    g_buffers.store(b, std::memory_order_release);
  }
  b->owned = true;
  b->thread_id = std::uint32_t(syscall(SYS_gettid));
  if (g_thread_exit_key_made) pthread_setspecific(g_thread_exit_key, b);
  t_buffer = b;
  return b;
}

void flush_all_buffers() noexcept {
  for (ThreadBuffer* b = g_buffers.load(std::memory_order_acquire); b; b = b->next) {
    lock_buffer(b);
    flush_buffer(b);
    unlock_buffer(b);
  }
}

bool stacks_for(EventKind kind) noexcept {
  return kind == EventKind::alloc || kind == EventKind::alloc_async ||
         kind == EventKind::alloc_failed || kind == EventKind::out_of_memory;
}

void stop_at_exit() noexcept { stop(); }

// A forked child (a data-loader worker) inherits the descriptor and the parent's unflushed buffers;
// letting it write would interleave two processes in one file. It records nothing.
void disable_in_child() noexcept {
  detail::g_enabled.store(false, std::memory_order_relaxed);
  if (g_fd >= 0) close(g_fd);
  g_fd = -1;
  for (ThreadBuffer* b = g_buffers.load(std::memory_order_relaxed); b; b = b->next) {
    b->busy.store(false, std::memory_order_relaxed);
    b->used = sizeof(fmt::ChunkHeader);
    b->records = 0;
  }
}

int rank_from_environment() noexcept {
  for (const char* name : {"RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"}) {
    const char* value = std::getenv(name);
    if (value && *value) return std::atoi(value);
  }
  return -1;
}

}  // namespace

bool write_trace_chunk(int fd, unsigned char* chunk, std::size_t payload_bytes, std::uint32_t thread_id,
                       std::uint32_t records) noexcept {
  if (fd < 0) return false;
  if (payload_bytes == 0) return true;
  fmt::ChunkHeader header;
  std::memcpy(header.magic, fmt::kChunkMagic, sizeof header.magic);
  header.payload_bytes = std::uint32_t(payload_bytes);
  header.thread_id = thread_id;
  header.record_count = records;
  header.checksum = fmt::chunk_checksum(thread_id, records, chunk + sizeof header, payload_bytes);
  std::memcpy(chunk, &header, sizeof header);
  return write_all(fd, chunk, sizeof header + payload_bytes);
}

void write_trace_module_map(int fd) noexcept {
  // Its own 64 KiB buffer: the recording's may be in use by another thread at this moment. Only the
  // first out-of-memory dump of a process calls this.
  static ModuleChunk chunk;
  chunk.fd = fd;
  chunk.used = sizeof(fmt::ChunkHeader);
  chunk.records = 0;
  dl_iterate_phdr(&append_module, &chunk);
  chunk.flush();
}

bool write_trace_header(int fd, std::uint64_t start_monotonic_ns, int stack_depth, std::uint32_t flags) noexcept {
  format::FileHeader header{};
  std::memcpy(header.magic, format::kMagic, sizeof header.magic);
  header.version = format::kVersion;
  header.header_bytes = sizeof header;
  header.start_monotonic_ns = start_monotonic_ns;
  header.start_realtime_ns = realtime_ns() - (monotonic_ns() - start_monotonic_ns);
  header.pid = std::uint32_t(getpid());
  header.rank = rank_from_environment();
  header.stack_depth = std::uint32_t(stack_depth);
  header.flags = flags;
  header.header_checksum = format::header_checksum(header);
  return write_all(fd, &header, sizeof header);
}

namespace detail {

void record_slow(EventKind kind, int device, std::uint64_t stream, std::uint64_t address,
                 std::uint64_t size, BackendId backend) noexcept {
  std::uint64_t frames[kMaxTraceStack];
  int frame_count = 0;
  if (g_stack_depth > 0 && stacks_for(kind)) frame_count = capture_stack(frames, g_stack_depth, /*skip record_slow*/ 1);
  std::uint64_t time = monotonic_ns();

  ThreadBuffer* b = t_buffer;
  if (!b && !(b = acquire_buffer())) return;
  std::size_t need = sizeof(format::EventRecord) + 8 * std::size_t(frame_count);
  lock_buffer(b);
  if (b->used + need > kBufferBytes) flush_buffer(b);
  format::EventRecord rec;
  rec.type = std::uint8_t(format::RecordType::event);
  rec.kind = std::uint8_t(kind);
  rec.backend = std::uint8_t(backend);
  rec.frame_count = std::uint8_t(frame_count);
  rec.device = device;
  rec.time_ns = time;
  rec.stream = stream;
  rec.address = address;
  rec.size = size;
  std::memcpy(b->data + b->used, &rec, sizeof rec);
  if (frame_count) std::memcpy(b->data + b->used + sizeof rec, frames, 8 * std::size_t(frame_count));
  b->used += need;
  b->records++;
  unlock_buffer(b);
}

}  // namespace detail

bool expand_trace_path(const char* pattern, char* out, std::size_t out_bytes) noexcept {
  if (!pattern || out_bytes == 0) return false;
  std::size_t n = 0;
  auto put = [&](const char* s) {
    for (; *s; ++s) {
      if (n + 1 >= out_bytes) return false;
      out[n++] = *s;
    }
    return true;
  };
  char number[24];
  for (const char* p = pattern; *p; ++p) {
    bool ok;
    if (p[0] == '%' && p[1] == 'p') {
      std::snprintf(number, sizeof number, "%d", int(getpid()));
      ok = put(number);
      ++p;
    } else if (p[0] == '%' && p[1] == 'r') {
      int rank = rank_from_environment();
      std::snprintf(number, sizeof number, "%d", rank < 0 ? 0 : rank);
      ok = put(number);
      ++p;
    } else if (p[0] == '%' && p[1] == '%') {
      ok = put("%");
      ++p;
    } else {
      char one[2] = {*p, '\0'};
      ok = put(one);
    }
    if (!ok) return false;
  }
  out[n] = '\0';
  return true;
}

bool start(const char* path, int stack_depth) noexcept {
  stop();
  char expanded[4096];
  if (!expand_trace_path(path, expanded, sizeof expanded)) {
    log(LogLevel::warn, "trace: GPUSHIM_TRACE path is too long; not recording");
    return false;
  }
  int fd = ::open(expanded, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    log(LogLevel::warn, "trace: cannot create %s (%s); not recording", expanded, std::strerror(errno));
    return false;
  }
  if (stack_depth < 0) stack_depth = 0;
  if (stack_depth > kMaxTraceStack) stack_depth = kMaxTraceStack;
  std::uint32_t flags = 0;
  if (stack_depth > 0 && !load_unwinder()) {
    static bool once = false;
    log_once(&once, LogLevel::warn,
             "trace: no stack unwinder (neither libunwind.so.8 nor glibc backtrace); GPUSHIM_TRACE_STACK ignored, stacks are off");
    flags |= format::kFlagNoUnwinder;
    stack_depth = 0;
  }
  {
    std::lock_guard<std::mutex> lock(g_registry_mutex);
    if (!g_thread_exit_key_made)
      g_thread_exit_key_made = pthread_key_create(&g_thread_exit_key, &on_thread_exit) == 0;
  }
  static std::once_flag process_hooks;
  std::call_once(process_hooks, [] {
    std::atexit(&stop_at_exit);
    pthread_atfork(nullptr, nullptr, &disable_in_child);
  });

  if (!write_trace_header(fd, monotonic_ns(), stack_depth, flags)) {
    log(LogLevel::warn, "trace: cannot write %s (%s); not recording", expanded, std::strerror(errno));
    close(fd);
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(g_file_mutex);
    g_fd = fd;
    g_stack_depth = stack_depth;
    g_modules_written_adds = 0;
    write_modules_if_changed_locked();
  }
  log(LogLevel::info, "trace: recording to %s%s", expanded, stack_depth ? " with stacks" : "");
  detail::g_enabled.store(true, std::memory_order_release);
  return true;
}

void stop() noexcept {
  detail::g_enabled.store(false, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(g_file_mutex);
    if (g_fd < 0) return;
  }
  flush_all_buffers();
  std::lock_guard<std::mutex> lock(g_file_mutex);
  write_modules_if_changed_locked();  // libraries loaded after the last flush
  alignas(8) unsigned char end_chunk[sizeof(format::ChunkHeader) + sizeof(format::EndRecord)] = {};
  end_chunk[sizeof(format::ChunkHeader)] = std::uint8_t(format::RecordType::end);
  write_chunk_locked(end_chunk, sizeof(format::EndRecord), 0, 1);
  close(g_fd);
  g_fd = -1;
}

void start_from_settings() noexcept {
  const Settings& s = settings();
  if (s.trace_path.empty()) return;
  start(s.trace_path.c_str(), s.trace_stack);
}

void flush() noexcept {
  {
    std::lock_guard<std::mutex> lock(g_file_mutex);
    if (g_fd < 0) return;
  }
  flush_all_buffers();
}

}  // namespace gpushim::tracing
