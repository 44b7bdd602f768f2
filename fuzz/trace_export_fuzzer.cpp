// `gpushim trace export FILE --format F -o OUT` on arbitrary bytes, for every export format.
#include "fuzz/trace_command_fuzzer.h"

namespace {
// Every format `gpushim trace export --format` knows: a new format is one more name here.
const char* const kFormats[] = {"chrome", "torch-snapshot"};
}  // namespace

int gpushim::fuzz::run_command(const std::string& path, const std::string& output, tracing::ToolStreams io) {
  int worst = 0;
  for (const char* format : kFormats) {
    std::ostringstream err;
    int code = tracing::run_trace_export(path, format, output, {io.out, err, false});
    check_trace_exit(code, err.str());
    if (code > worst) worst = code;
    if (code == 2) io.err << err.str();
    if (code == 2) break;  // every format reads the same file the same way
  }
  return worst;
}
