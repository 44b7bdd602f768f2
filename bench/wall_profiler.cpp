// A wall-clock sampling profiler to preload beside gpushim: where do a program's threads spend their
// time, blocked time included? A CPU profiler (perf, gperftools) sees only threads that run; with 16
// threads that each have a stream, alloc_bench's threads are mostly off the CPU (gperftools took 280
// samples in 3 s of 16 threads), so the question "what are they waiting for" needs samples of every
// thread at fixed wall-clock intervals. The GPU host has no perf, so this is the tool.
//
//   WALL_PROFILE=/tmp/w.txt LD_PRELOAD="build/bench/libwall_profiler.so build/lib/libgpushim.so" alloc_bench ...
//   scripts/wall_profile.py /tmp/w.txt --match alloc_bench      (names the frames with addr2line)
//
// A sampler thread sends SIGURG to every other thread of the process every WALL_PROFILE_US
// microseconds (default 1000); the handler stores the interrupted thread's stack (glibc's backtrace(),
// warmed up first so it loads libgcc_s outside a handler) in a fixed array. At exit the samples are
// written to WALL_PROFILE ("%p" there becomes the process id), one line per distinct stack:
// "tid count module+0xoffset ..." (leaf first). SA_RESTART makes the interrupted system calls resume.
// Why SIGURG: its default action is to ignore it. A signal still pending when a profiled process calls
// exec (a wrapper script, `timeout`) is delivered to the new image before its constructors install a
// handler; SIGPROF's default action killed it ("Profiling timer expired").
// A benchmark aid only: it is never part of libgpushim.so.
#include <dirent.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <string>
#include <vector>

namespace {

constexpr int kSampleSignal = SIGURG;
constexpr int kMaxFrames = 40;
constexpr std::size_t kMaxSamples = 200000;

struct Sample {
  pid_t tid;
  int depth;
  void* frames[kMaxFrames];
};

Sample* g_samples = nullptr;
std::atomic<std::size_t> g_next{0};
std::atomic<bool> g_stop{false};
pthread_t g_sampler;
pid_t g_sampler_tid = 0;
const char* g_out = nullptr;

void on_sample_signal(int, siginfo_t*, void*) {
  const int saved_errno = errno;
  const std::size_t slot = g_next.fetch_add(1, std::memory_order_relaxed);
  if (slot < kMaxSamples) {
    Sample& s = g_samples[slot];
    s.tid = static_cast<pid_t>(syscall(SYS_gettid));
    s.depth = backtrace(s.frames, kMaxFrames);
  }
  errno = saved_errno;
}

void* sampler_main(void*) {
  g_sampler_tid = static_cast<pid_t>(syscall(SYS_gettid));
  const char* period_text = std::getenv("WALL_PROFILE_US");
  const long period_us = period_text ? std::max(100L, std::atol(period_text)) : 1000L;
  const pid_t pid = getpid();
  while (!g_stop.load(std::memory_order_relaxed) && g_next.load(std::memory_order_relaxed) < kMaxSamples) {
    if (DIR* tasks = opendir("/proc/self/task")) {
      while (dirent* entry = readdir(tasks)) {
        const pid_t tid = static_cast<pid_t>(std::atol(entry->d_name));
        if (tid > 0 && tid != g_sampler_tid) syscall(SYS_tgkill, pid, tid, kSampleSignal);
      }
      closedir(tasks);
    }
    timespec pause{0, period_us * 1000};
    nanosleep(&pause, nullptr);
  }
  return nullptr;
}

// One line per distinct (thread, stack), leaf first, each frame as its module's path and offset.
void write_samples() {
  // "%p" in the path becomes the process id: a wrapper (timeout, a shell) that inherits LD_PRELOAD
  // would otherwise overwrite the program's profile with its own when it exits after it.
  std::string path = g_out;
  if (const std::size_t at = path.find("%p"); at != std::string::npos)
    path.replace(at, 2, std::to_string(getpid()));
  FILE* out = std::fopen(path.c_str(), "w");
  if (!out) return;
  const std::size_t n = std::min(g_next.load(), kMaxSamples);
  std::map<std::pair<pid_t, std::vector<void*>>, std::size_t> stacks;
  for (std::size_t i = 0; i < n; ++i) {
    const Sample& s = g_samples[i];
    // Frame 0 is the handler, frame 1 the signal trampoline: the interrupted function is frame 2.
    if (s.depth <= 2) continue;
    ++stacks[{s.tid, std::vector<void*>(s.frames + 2, s.frames + s.depth)}];
  }
  std::map<void*, std::string> names;
  for (const auto& [key, count] : stacks) {
    std::fprintf(out, "%d %zu", key.first, count);
    for (void* pc : key.second) {
      auto it = names.find(pc);
      if (it == names.end()) {
        Dl_info info{};
        char text[600];
        // A return address points after the call: one byte back names the calling line.
        if (dladdr(pc, &info) && info.dli_fname)
          std::snprintf(text, sizeof text, "%s+0x%lx", info.dli_fname,
                        static_cast<unsigned long>(static_cast<char*>(pc) - static_cast<char*>(info.dli_fbase) - 1));
        else
          std::snprintf(text, sizeof text, "?+%p", pc);
        it = names.emplace(pc, text).first;
      }
      std::fprintf(out, " %s", it->second.c_str());
    }
    std::fputc('\n', out);
  }
  std::fprintf(out, "# samples %zu of %zu taken\n", n, g_next.load());
  std::fclose(out);
}

__attribute__((constructor)) void start() {
  g_out = std::getenv("WALL_PROFILE");
  if (!g_out) return;
  g_samples = static_cast<Sample*>(std::calloc(kMaxSamples, sizeof(Sample)));
  if (!g_samples) return;
  void* warm[4];
  backtrace(warm, 4);  // loads libgcc_s now, not inside the first handler
  struct sigaction action {};
  action.sa_sigaction = on_sample_signal;
  action.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&action.sa_mask);
  sigaction(kSampleSignal, &action, nullptr);
  pthread_create(&g_sampler, nullptr, sampler_main, nullptr);
}

__attribute__((destructor)) void finish() {
  if (!g_out || !g_samples) return;
  g_stop.store(true);
  pthread_join(g_sampler, nullptr);
  write_samples();
}

}  // namespace
