// `gpushim trace report FILE -o OUT.html` on arbitrary bytes.
#include "fuzz/trace_command_fuzzer.h"

int gpushim::fuzz::run_command(const std::string& path, const std::string& output, tracing::ToolStreams io) {
  return tracing::run_trace_report(path, output, io);
}
