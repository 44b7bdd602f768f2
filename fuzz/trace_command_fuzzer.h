// One fuzz target per `gpushim trace` command: each target file names its command in one function,
// and this header supplies the libFuzzer entry point around it. A new reader or format (an OOM dump, a
// snapshot export) is one more small file like fuzz/trace_summary_fuzzer.cpp plus one line in
// fuzz/CMakeLists.txt.
#pragma once

#include <sstream>

#include "fuzz/fuzz_support.h"
#include "analysis/trace_tool_commands.h"

namespace gpushim::fuzz {

// Runs the command on `path` (and may write `output`); returns its exit status.
int run_command(const std::string& path, const std::string& output, tracing::ToolStreams io);

}  // namespace gpushim::fuzz

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  static gpushim::fuzz::InputFile file;
  const std::string& path = file.write(data, size);
  std::ostringstream out, err;
  int code = gpushim::fuzz::run_command(path, file.output(), {out, err, false});
  gpushim::fuzz::check_trace_exit(code, err.str());
  return 0;
}
