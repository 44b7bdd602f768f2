// Writes Python pickle data (protocol 2) from C++: the containers and scalars a PyTorch memory snapshot
// is made of, for analysis/torch_snapshot_export.h. Only opcodes every Python 3 unpickler reads; no
// classes, so loading the file runs no code. Strings are written as UTF-8; bytes outside ASCII are
// replaced by '?' (module paths need not be valid UTF-8, and one bad byte would fail the whole load).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace gpushim::tracing {

class PickleWriter {
 public:
  PickleWriter();
  // Containers: begin_*, the items (a dict takes key then value, alternating), end_*.
  void begin_dict();
  void end_dict();
  void begin_list();
  void end_list();
  void begin_tuple();
  void end_tuple();
  void string(std::string_view text);
  void integer(std::int64_t value);
  void unsigned_integer(std::uint64_t value);
  void boolean(bool value);
  void none();
  // Memo: remember() stores the value just written under a new id; recall(id) writes it again by
  // reference (the unpickler shares one object), so repeated stack frames cost 5 bytes each.
  std::uint32_t remember();
  void recall(std::uint32_t id);
  // The pickle, with its STOP opcode. The writer is spent afterwards.
  std::string finish();

 private:
  void u32(std::uint32_t value);
  std::string out_;
  std::uint32_t next_memo_ = 0;
};

}  // namespace gpushim::tracing
