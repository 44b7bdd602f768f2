// `gpushim trace summary FILE` on arbitrary bytes.
#include "fuzz/trace_command_fuzzer.h"

int gpushim::fuzz::run_command(const std::string& path, const std::string&, tracing::ToolStreams io) {
  return tracing::run_trace_summary(path, 10, io);
}
