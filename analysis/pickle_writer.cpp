#include "analysis/pickle_writer.h"

namespace gpushim::tracing {
namespace {

// Opcodes of pickle protocol 2 (CPython's Lib/pickle.py names them so).
constexpr char kProto = '\x80';
constexpr char kStop = '.';
constexpr char kMark = '(';
constexpr char kEmptyDict = '}';
constexpr char kSetItems = 'u';
constexpr char kEmptyList = ']';
constexpr char kAppends = 'e';
constexpr char kTuple = 't';
constexpr char kBinUnicode = 'X';
constexpr char kBinInt = 'J';
constexpr char kLong1 = '\x8a';
constexpr char kNewTrue = '\x88';
constexpr char kNewFalse = '\x89';
constexpr char kNone = 'N';
constexpr char kLongBinPut = 'r';
constexpr char kLongBinGet = 'j';

}  // namespace

PickleWriter::PickleWriter() {
  out_ += kProto;
  out_ += '\x02';
}

void PickleWriter::u32(std::uint32_t value) {
  for (int i = 0; i < 4; ++i) out_ += static_cast<char>((value >> (8 * i)) & 0xff);
}

void PickleWriter::begin_dict() {
  out_ += kEmptyDict;
  out_ += kMark;
}
void PickleWriter::end_dict() { out_ += kSetItems; }
void PickleWriter::begin_list() {
  out_ += kEmptyList;
  out_ += kMark;
}
void PickleWriter::end_list() { out_ += kAppends; }
void PickleWriter::begin_tuple() { out_ += kMark; }
void PickleWriter::end_tuple() { out_ += kTuple; }

void PickleWriter::string(std::string_view text) {
  out_ += kBinUnicode;
  u32(static_cast<std::uint32_t>(text.size()));
  for (char c : text) out_ += (static_cast<unsigned char>(c) < 0x80) ? c : '?';
}

void PickleWriter::integer(std::int64_t value) {
  if (value >= INT32_MIN && value <= INT32_MAX) {
    out_ += kBinInt;
    u32(static_cast<std::uint32_t>(static_cast<std::int32_t>(value)));
    return;
  }
  // LONG1: little-endian two's complement, as few bytes as keep the sign.
  std::string bytes;
  std::uint64_t bits = static_cast<std::uint64_t>(value);
  for (int i = 0; i < 8; ++i) bytes += static_cast<char>((bits >> (8 * i)) & 0xff);
  const char fill = value < 0 ? '\xff' : '\0';
  while (bytes.size() > 1 && bytes.back() == fill &&
         ((static_cast<unsigned char>(bytes[bytes.size() - 2]) & 0x80) != 0) == (value < 0))
    bytes.pop_back();
  out_ += kLong1;
  out_ += static_cast<char>(bytes.size());
  out_ += bytes;
}

void PickleWriter::unsigned_integer(std::uint64_t value) {
  if (value <= static_cast<std::uint64_t>(INT64_MAX)) return integer(static_cast<std::int64_t>(value));
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes += static_cast<char>((value >> (8 * i)) & 0xff);
  bytes += '\0';  // the top bit is set: a zero byte keeps it positive
  out_ += kLong1;
  out_ += static_cast<char>(bytes.size());
  out_ += bytes;
}

void PickleWriter::boolean(bool value) { out_ += value ? kNewTrue : kNewFalse; }
void PickleWriter::none() { out_ += kNone; }

std::uint32_t PickleWriter::remember() {
  out_ += kLongBinPut;
  u32(next_memo_);
  return next_memo_++;
}

void PickleWriter::recall(std::uint32_t id) {
  out_ += kLongBinGet;
  u32(id);
}

std::string PickleWriter::finish() {
  out_ += kStop;
  return std::move(out_);
}

}  // namespace gpushim::tracing
