// `gpushim trace replay FILE --backend all` on arbitrary bytes: every replayable backend's algorithm
// runs whatever allocations the input describes.
#include "fuzz/trace_command_fuzzer.h"

int gpushim::fuzz::run_command(const std::string& path, const std::string&, tracing::ToolStreams io) {
  return tracing::run_trace_replay(path, "all", io);
}
