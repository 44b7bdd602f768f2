// What every gpushim fuzz target shares: the input as a file (the `gpushim trace` commands read paths),
// and the promise each target checks besides "no crash": a refusal is exit status 2 and ONE line that
// names a byte offset. A broken promise aborts, which libFuzzer reports as a finding with its input.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace gpushim::fuzz {

// Stops the run with a finding: libFuzzer saves the input that broke `what`.
[[noreturn]] inline void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "gpushim fuzz finding: %s\n%s\n", what, detail.c_str());
  std::abort();
}

// One file per fuzzing process, rewritten for every input (the commands read a path, as users call them).
class InputFile {
 public:
  InputFile() {
    char pattern[] = "/tmp/gpushim-fuzz-XXXXXX";
    const char* dir = mkdtemp(pattern);
    dir_ = dir ? dir : "/tmp";
    path_ = dir_ + "/input.trace";
    output_ = dir_ + "/output";
  }
  ~InputFile() {
    ::unlink(path_.c_str());
    ::unlink(output_.c_str());
    ::rmdir(dir_.c_str());
  }
  const std::string& write(const unsigned char* data, std::size_t size) {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    if (!f) finding("cannot write the input file", path_);
    if (size && std::fwrite(data, 1, size, f) != size) finding("short write of the input file", path_);
    std::fclose(f);
    return path_;
  }
  const std::string& output() const { return output_; }

 private:
  std::string dir_, path_, output_;
};

// Exit status 0 or 2 only; on 2 exactly one line on stderr naming the byte offset.
inline void check_trace_exit(int code, const std::string& err) {
  if (code != 0 && code != 2) finding("exit status is neither 0 nor 2", err);
  if (code != 2) return;
  const std::size_t newline = err.find('\n');
  if (newline == std::string::npos || newline + 1 != err.size()) finding("a refusal is not exactly one line", err);
  if (err.find("byte offset") == std::string::npos && err.find("cannot replay") == std::string::npos)
    finding("a refusal names no byte offset", err);
}

}  // namespace gpushim::fuzz
