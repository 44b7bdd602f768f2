// The export socket against a hostile local process: the pure message checks (ipc/export_protocol.h)
// on malformed messages, and a real ExportServer fed garbage over its socket. Garbage gets no answer or
// a refusal, never a descriptor, never a hang; a silent client costs the server one timeout, not more.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>

#include "ipc/export_protocol.h"
#include "ipc/export_server.h"
#include "tests/socket_replies.h"

namespace gpushim::ipc {
namespace {

using namespace protocol;

constexpr std::uint64_t kToken = 0x5eed5eed5eed5eedull;

TEST(ExportProtocol, RequestNeedsSizeMagicPaddingTokenAndSameUser) {
  Request good{kMagic, kToken, 7, kFetch, 0};
  EXPECT_EQ(judge_request(&good, sizeof good, kToken, true).action, RequestAction::fetch);
  EXPECT_EQ(judge_request(&good, sizeof good, kToken, true).export_id, 7u);
  EXPECT_EQ(judge_request(&good, sizeof good - 1, kToken, true).action, RequestAction::ignore);
  EXPECT_EQ(judge_request(nullptr, sizeof good, kToken, true).action, RequestAction::ignore);
  EXPECT_EQ(judge_request(&good, sizeof good, kToken, false).action, RequestAction::refuse);
  EXPECT_EQ(judge_request(&good, sizeof good, kToken + 1, true).action, RequestAction::refuse);
  Request bad = good;
  bad.magic ^= 1;
  EXPECT_EQ(judge_request(&bad, sizeof bad, kToken, true).action, RequestAction::ignore);
  bad = good;
  bad.zero = 1;
  EXPECT_EQ(judge_request(&bad, sizeof bad, kToken, true).action, RequestAction::ignore);
  bad = good;
  bad.operation = 99;
  EXPECT_EQ(judge_request(&bad, sizeof bad, kToken, true).action, RequestAction::unknown);
  bad.operation = kRelease;
  EXPECT_EQ(judge_request(&bad, sizeof bad, kToken, true).action, RequestAction::release);
}

TEST(ExportProtocol, ReplyHeaderIsCheckedBeforeItSizesAnything) {
  ReplyHeader h{};
  h.magic = kMagic;
  h.status = kReplyOk;
  h.chunk_count = 2;
  h.block_size = 4096;
  h.kind = std::uint32_t(ExportKind::mapped_chunks);
  ExportRecord record;
  std::uint32_t count = 0;
  EXPECT_EQ(judge_reply_header(&h, sizeof h, &record, &count), FetchStatus::ok);
  EXPECT_EQ(count, 2u);
  ReplyHeader bad = h;
  bad.chunk_count = kMaxChunksPerExport + 1;  // would size the importer's vectors
  EXPECT_EQ(judge_reply_header(&bad, sizeof bad, &record, &count), FetchStatus::protocol_error);
  bad = h;
  bad.chunk_count = 0;
  EXPECT_EQ(judge_reply_header(&bad, sizeof bad, &record, &count), FetchStatus::protocol_error);
  bad = h;
  bad.kind = std::uint32_t(ExportKind::pool_pointer);  // a pool block has exactly one descriptor
  EXPECT_EQ(judge_reply_header(&bad, sizeof bad, &record, &count), FetchStatus::protocol_error);
  bad = h;
  bad.kind = 7;
  EXPECT_EQ(judge_reply_header(&bad, sizeof bad, &record, &count), FetchStatus::protocol_error);
  bad = h;
  bad.status = 9;
  EXPECT_EQ(judge_reply_header(&bad, sizeof bad, &record, &count), FetchStatus::protocol_error);
  bad = h;
  bad.status = kReplyRefused;
  EXPECT_EQ(judge_reply_header(&bad, sizeof bad, &record, &count), FetchStatus::refused);
  EXPECT_EQ(judge_reply_header(&h, sizeof h - 8, &record, &count), FetchStatus::protocol_error);
}

TEST(ExportProtocol, ChunksMustTileTheBlockWithoutOverflow) {
  ExportRecord r;
  r.block_size = 6000;
  r.offset_in_span = 100;
  r.chunks = {{0, 4096, -1}, {4096, 4096, -1}};
  EXPECT_TRUE(chunks_cover_block(r));
  r.block_size = 8192;  // reaches past the chunks
  EXPECT_FALSE(chunks_cover_block(r));
  r.block_size = 6000;
  r.chunks[1].offset_in_span = 8192;  // a gap
  EXPECT_FALSE(chunks_cover_block(r));
  r.chunks = {{0, ~0ull, -1}, {~0ull, 2, -1}};  // sizes that wrap the span
  EXPECT_FALSE(chunks_cover_block(r));
  r.chunks = {{0, 4096, -1}};
  r.offset_in_span = ~0ull - 10;  // offset + size wraps
  EXPECT_FALSE(chunks_cover_block(r));
  r.chunks = {{0, 0, -1}};
  r.offset_in_span = 0;
  r.block_size = 0;
  EXPECT_FALSE(chunks_cover_block(r));
}

// A real server with one export, and a client that speaks garbage.
class HostileClient : public ::testing::Test {
 protected:
  void SetUp() override {
    int fd = ::memfd_create("gpushim-test-chunk", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 4096), 0);
    ASSERT_TRUE(registry_.add_chunk(1, fd));
    ExportRecord record;
    record.block_size = 4096;
    record.chunks.push_back(ExportedChunk{0, 4096, -1});
    export_id_ = registry_.add_export(0x1000, {1}, record);
    ASSERT_NE(export_id_, 0u);
    ASSERT_TRUE(server_.start());
  }
  int connect_client() {
    int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path + 1, name_.data(), name_.size());
    timeval timeout{15, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address),
                        socklen_t(offsetof(sockaddr_un, sun_path) + 1 + name_.size())),
              0);
    return fd;
  }
  // Sends `bytes` (with our own stdin attached as a descriptor when `with_fd`), then reads until the
  // server closes. Returns the answer's bytes; *descriptors counts descriptors that came back.
  std::string exchange(const void* bytes, std::size_t size, bool with_fd, int* descriptors) {
    int fd = connect_client();
    iovec io{const_cast<void*>(bytes), size};
    msghdr message{};
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (with_fd) {
      message.msg_control = control;
      message.msg_controllen = sizeof control;
      cmsghdr* c = CMSG_FIRSTHDR(&message);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      int zero = 0;
      std::memcpy(CMSG_DATA(c), &zero, sizeof zero);
    }
    EXPECT_GE(::sendmsg(fd, &message, MSG_NOSIGNAL), 0);
    const test_support::SocketReplies replies = test_support::read_until_closed(fd);
    EXPECT_EQ(replies.error, 0) << "the server neither answered nor closed";
    *descriptors = replies.descriptors;
    ::close(fd);
    return replies.bytes;
  }
  ReplyHeader header_of(const std::string& answer) {
    ReplyHeader h{};
    EXPECT_GE(answer.size(), sizeof h);
    if (answer.size() >= sizeof h) std::memcpy(&h, answer.data(), sizeof h);
    return h;
  }

  std::string name_ = "gpushim-test-hostile." + std::to_string(::getpid());
  ExportRegistry registry_;
  ExportServer server_{registry_, kToken, name_};
  std::uint64_t export_id_ = 0;
};

TEST_F(HostileClient, GarbageGetsNoAnswerAndNoDescriptor) {
  int descriptors = 0;
  const char garbage[] = "GET / HTTP/1.0\r\n\r\n";
  EXPECT_EQ(exchange(garbage, sizeof garbage, false, &descriptors), "");
  EXPECT_EQ(descriptors, 0);
  Request request{kMagic, kToken, export_id_, kFetch, 0};
  // The right request, one byte short or with a byte more, or carrying a descriptor: not our protocol.
  EXPECT_EQ(exchange(&request, sizeof request - 1, false, &descriptors), "");
  std::string longer(reinterpret_cast<const char*>(&request), sizeof request);
  longer += 'x';
  EXPECT_EQ(exchange(longer.data(), longer.size(), false, &descriptors), "");
  EXPECT_EQ(exchange(&request, sizeof request, true, &descriptors), "");
  EXPECT_EQ(descriptors, 0);
}

TEST_F(HostileClient, WrongTokenIsRefusedWithoutDescriptors) {
  int descriptors = 0;
  Request request{kMagic, kToken ^ 1, export_id_, kFetch, 0};
  ReplyHeader h = header_of(exchange(&request, sizeof request, false, &descriptors));
  EXPECT_EQ(h.status, kReplyRefused);
  EXPECT_EQ(descriptors, 0);
  request = {kMagic, kToken, export_id_, 42, 0};  // an operation this version does not know
  h = header_of(exchange(&request, sizeof request, false, &descriptors));
  EXPECT_EQ(h.status, kReplyUnknown);
  EXPECT_EQ(descriptors, 0);
}

TEST_F(HostileClient, TheRightRequestStillWorksAfterGarbage) {
  int descriptors = 0;
  const char garbage[7] = {1, 2, 3, 4, 5, 6, 7};
  exchange(garbage, sizeof garbage, false, &descriptors);
  Request request{kMagic, kToken, export_id_, kFetch, 0};
  std::string answer = exchange(&request, sizeof request, false, &descriptors);
  EXPECT_EQ(header_of(answer).status, kReplyOk);
  EXPECT_EQ(descriptors, 1);
  EXPECT_TRUE(registry_.release(export_id_, ::getpid()));
}

TEST_F(HostileClient, ASilentClientCostsOneTimeoutNotAHang) {
  int silent = connect_client();  // connects and says nothing
  auto start = std::chrono::steady_clock::now();
  int descriptors = 0;
  Request request{kMagic, kToken ^ 1, export_id_, kFetch, 0};
  ReplyHeader h = header_of(exchange(&request, sizeof request, false, &descriptors));
  EXPECT_EQ(h.status, kReplyRefused);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  ::close(silent);
}

}  // namespace
}  // namespace gpushim::ipc
