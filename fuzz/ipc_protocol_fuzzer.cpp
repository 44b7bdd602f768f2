// The IPC export socket's protocol, as a hostile local process would speak it. Each input is judged by
// the pure message checks (ipc/export_protocol.h), then sent as it is to a real ExportServer, in this
// process, over its socket. Checked besides "no crash": nothing is ever acted on without the right
// magic and token; a garbage request gets no answer or a refusal, never a descriptor, within the
// socket timeout; an accepted chunk list never reaches past what the exporter sent.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "fuzz/fuzz_support.h"
#include "ipc/export_protocol.h"
#include "ipc/export_server.h"
#include "tests/socket_replies.h"

using namespace gpushim;
using namespace gpushim::ipc;
using namespace gpushim::ipc::protocol;
using gpushim::fuzz::finding;

namespace {

// Fixed, so that the seed corpus can hold requests that pass the token check and reach the registry.
constexpr std::uint64_t kToken = 0x0123456789abcdefull;

struct Exporter {
  ExportRegistry registry;
  ExportServer server{registry, kToken, "gpushim-fuzz-ipc." + std::to_string(::getpid())};
  std::uint64_t export_id = 0;
  Exporter() {
    int fd = ::memfd_create("gpushim-fuzz-chunk", MFD_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, 4096) != 0 || !registry.add_chunk(1, fd)) finding("cannot set up the registry", "");
    ExportRecord record;
    record.block_size = 4096;
    record.chunks.push_back(ExportedChunk{0, 4096, -1});
    export_id = registry.add_export(0x1000, {1}, record);
    if (!server.start()) finding("cannot start the export server", "");
  }
};

// Sends `data` as one message to the server and reads its answer. Returns the descriptors it got.
int exchange(const std::string& name, const unsigned char* data, std::size_t size, ReplyHeader* reply,
             bool* answered) {
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  socklen_t length = socklen_t(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  timeval timeout{10, 0};  // twice the server's own: the server must answer or close before this
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), length) != 0) finding("cannot connect", "");
  // A zero-length SEQPACKET message is legal too; a hostile peer may send one.
  if (::send(fd, data, size, MSG_NOSIGNAL) < 0 && size <= 65536) finding("cannot send", "");
  const test_support::SocketReplies replies = test_support::read_until_closed(fd);
  if (replies.error != 0) finding("the server neither answered nor closed in time", std::to_string(replies.error));
  *answered = replies.messages > 0;
  if (replies.first_size == sizeof(ReplyHeader)) std::memcpy(reply, replies.bytes.data(), sizeof *reply);
  ::close(fd);
  return replies.descriptors;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const unsigned char* data, std::size_t size) {
  static Exporter exporter;

  // The server's judgement, for both answers SO_PEERCRED may give.
  for (bool same_user : {false, true}) {
    RequestDecision d = judge_request(data, size, kToken, same_user);
    Request request{};
    if (size == sizeof request) std::memcpy(&request, data, sizeof request);
    const bool acted = d.action == RequestAction::fetch || d.action == RequestAction::release;
    if (acted && (size != sizeof request || request.magic != kMagic || request.token != kToken || !same_user))
      finding("a request was acted on without magic, token and same user", "");
  }

  // The importer's judgement of the same bytes as a reply, then as a chunk batch and chunk list.
  ExportRecord record;
  std::uint32_t chunk_count = 0;
  if (judge_reply_header(data, size, &record, &chunk_count) == FetchStatus::ok &&
      (chunk_count == 0 || chunk_count > kMaxChunksPerExport ||
       (record.kind == ExportKind::pool_pointer && chunk_count != 1)))
    finding("a malformed reply header was accepted", "");
  ChunkWire wires[kMaxFdsPerMessage];
  std::size_t expected = size ? 1 + data[0] % kMaxFdsPerMessage : 1;
  if (judge_chunk_batch(data, size, expected, wires)) {
    ExportRecord chunks;
    chunks.block_size = size > 8 ? data[8] * 4096ull : 0;
    chunks.offset_in_span = size > 9 ? data[9] * 512ull : 0;
    for (std::size_t i = 0; i < expected; ++i) chunks.chunks.push_back(ExportedChunk{wires[i].offset_in_span, wires[i].size, -1});
    if (chunks_cover_block(chunks)) {
      std::uint64_t span = 0;
      for (const ExportedChunk& c : chunks.chunks) span += c.size;
      if (chunks.offset_in_span + chunks.block_size > span || chunks.offset_in_span + chunks.block_size < chunks.offset_in_span)
        finding("a block reaching past its chunks was accepted", "");
    }
  }

  // The real server, over its socket.
  ReplyHeader reply{};
  bool answered = false;
  int descriptors = exchange("gpushim-fuzz-ipc." + std::to_string(::getpid()), data, size, &reply, &answered);
  RequestDecision d = judge_request(data, size, kToken, true);
  if (descriptors && d.action != RequestAction::fetch) finding("descriptors went to a request that is no fetch", "");
  if (d.action == RequestAction::ignore && answered) finding("garbage got an answer", "");
  // A fetch that succeeded makes this process a holder; let go, so the export stays fetchable.
  if (descriptors) exporter.registry.release(d.export_id, ::getpid());
  return 0;
}
