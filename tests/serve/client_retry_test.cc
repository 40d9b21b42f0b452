// GenerationClient's retries (clients/cpp/generation_client.h, RetryPolicy): which failures are
// retried, and a stream that breaks on one target continuing on the next with the same request
// id and resume_from_offset, the caller seeing every block once. The servers are scripted fakes
// of the Generation service on loopback (the real scheduler's re-attach is journal_kill_test's
// and client_failover_test's).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/generation_client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace dmoe {
namespace {

using client::ClientOptions;
using client::GenerationClient;
using client::IsRetryable;
using client::RetryPolicy;
using dmoe_testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::SizeIs;

constexpr int kTotalIds = 40;

int32_t IdAt(int64_t offset) { return 1000 + static_cast<int32_t>(offset); }

std::vector<int32_t> AllIds() {
  std::vector<int32_t> ids;
  for (int i = 0; i < kTotalIds; ++i) ids.push_back(IdAt(i));
  return ids;
}

// A Generation service that "generates" kTotalIds ids (IdAt) in blocks of `block` ids.
struct Script {
  int block = 8;
  // Blocks sent before the stream fails with UNAVAILABLE; < 0: never.
  int fail_after_blocks = -1;
  // Start from the block that holds resume_from_offset, cut at it (a journalling server);
  // false: from offset 0, like a server that ignores it.
  bool honor_resume = true;
  // Answer every call with this code at once (OK: generate).
  absl::StatusCode error = absl::StatusCode::kOk;
  // End with UNAVAILABLE after the final event (a connection lost at the very end).
  bool fail_after_final = false;
};

class FakeGeneration final : public dmoe::v1::Generation::Service {
 public:
  explicit FakeGeneration(Script script) : script_(script) {}

  grpc::Status Generate(grpc::ServerContext*, const dmoe::v1::GenerateRequest* request,
                        dmoe::v1::GenerateResponse* response) override {
    Record(*request);
    if (script_.error != absl::StatusCode::kOk) return Error(script_.error);
    if (script_.fail_after_blocks >= 0) return Error(absl::StatusCode::kUnavailable);
    response->set_request_id(request->request_id());
    for (int32_t id : AllIds()) response->add_ids(id);
    return grpc::Status::OK;
  }

  grpc::Status GenerateStream(grpc::ServerContext*, const dmoe::v1::GenerateRequest* request,
                              grpc::ServerWriter<dmoe::v1::GenerateStreamResponse>* writer)
      override {
    Record(*request);
    if (script_.error != absl::StatusCode::kOk) return Error(script_.error);
    const int64_t resume = script_.honor_resume ? request->resume_from_offset() : 0;
    int sent = 0;
    for (int64_t start = resume - resume % script_.block; start < kTotalIds;
         start += script_.block) {
      if (sent == script_.fail_after_blocks) return Error(absl::StatusCode::kUnavailable);
      dmoe::v1::GenerateStreamResponse event;
      event.set_request_id(request->request_id());
      dmoe::v1::BlockEvent* block = event.mutable_block();
      const int64_t from = std::max(start, resume);
      block->set_offset(from);
      for (int64_t i = from; i < std::min<int64_t>(start + script_.block, kTotalIds); ++i) {
        block->add_ids(IdAt(i));
      }
      if (!writer->Write(event)) return grpc::Status::CANCELLED;
      ++sent;
    }
    dmoe::v1::GenerateStreamResponse final_event;
    final_event.mutable_final()->mutable_stats()->set_generated_tokens(kTotalIds);
    writer->Write(final_event);
    return script_.fail_after_final ? Error(absl::StatusCode::kUnavailable) : grpc::Status::OK;
  }

  // (request_id, resume_from_offset) of every call, in order.
  std::vector<std::pair<std::string, int64_t>> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  static grpc::Status Error(absl::StatusCode code) {
    return grpc::Status(static_cast<grpc::StatusCode>(code), "scripted failure");
  }
  void Record(const dmoe::v1::GenerateRequest& request) {
    absl::MutexLock lock(&mu_);
    calls_.emplace_back(request.request_id(), request.resume_from_offset());
  }

  const Script script_;
  absl::Mutex mu_;
  std::vector<std::pair<std::string, int64_t>> calls_ ABSL_GUARDED_BY(mu_);
};

// A FakeGeneration on a loopback port.
struct FakeServer {
  explicit FakeServer(Script script) : service(script) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  ~FakeServer() { server->Shutdown(); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }

  FakeGeneration service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

// The connected client; null, with a test failure, if Connect fails.
std::unique_ptr<GenerationClient> Connected(const ClientOptions& options) {
  auto client = GenerationClient::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// A client of `first` with `second` as its fallback.
std::unique_ptr<GenerationClient> ClientOf(const FakeServer& first, const FakeServer& second,
                                           const RetryPolicy& retry) {
  return Connected(
      {.target = first.address(), .fallback_targets = {second.address()}, .retry = retry});
}

RetryPolicy Retries(int max_attempts) {
  RetryPolicy retry;
  retry.max_attempts = max_attempts;
  retry.initial_backoff = absl::Milliseconds(10);
  retry.max_backoff = absl::Milliseconds(50);
  return retry;
}

struct RetryLog final : RetryPolicy::Observer {
  void OnRetry(const absl::Status& failure, int attempt, const std::string& target) override {
    retries.push_back(
        absl::StrCat(attempt, " ", target, " ", absl::StatusCodeToString(failure.code())));
  }
  std::vector<std::string> retries;
};

dmoe::v1::GenerateRequest Request() {
  dmoe::v1::GenerateRequest request;
  request.mutable_prompt_ids()->add_ids(7);
  return request;
}

// What a stream handed to its caller.
struct Received {
  std::vector<int32_t> ids;
  std::vector<int64_t> bad_offsets;  // blocks that did not start where the previous one ended
  absl::StatusOr<dmoe::v1::FinalEvent> result;
};

Received Stream(GenerationClient& client, const dmoe::v1::GenerateRequest& request) {
  Received got;
  got.result = client.GenerateStream(request, [&](const dmoe::v1::GenerateStreamResponse& e) {
    if (e.has_block()) {
      if (e.block().offset() != static_cast<int64_t>(got.ids.size())) {
        got.bad_offsets.push_back(e.block().offset());
      }
      got.ids.insert(got.ids.end(), e.block().ids().begin(), e.block().ids().end());
    }
    return true;
  });
  return got;
}

TEST(RetryDecisionTest, OnlyUnavailableIsRetried) {
  EXPECT_TRUE(IsRetryable(absl::UnavailableError("connection reset")));
  for (absl::StatusCode code :
       {absl::StatusCode::kOk, absl::StatusCode::kCancelled, absl::StatusCode::kUnknown,
        absl::StatusCode::kInvalidArgument, absl::StatusCode::kDeadlineExceeded,
        absl::StatusCode::kNotFound, absl::StatusCode::kAlreadyExists,
        absl::StatusCode::kPermissionDenied, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kFailedPrecondition, absl::StatusCode::kAborted,
        absl::StatusCode::kOutOfRange, absl::StatusCode::kUnimplemented,
        absl::StatusCode::kInternal, absl::StatusCode::kDataLoss,
        absl::StatusCode::kUnauthenticated}) {
    EXPECT_FALSE(IsRetryable(absl::Status(code, "x"))) << absl::StatusCodeToString(code);
  }
}

TEST(RetryDecisionTest, BackoffGrowsToItsCapAndPolicyIsValidated) {
  RetryPolicy retry;
  retry.initial_backoff = absl::Milliseconds(100);
  retry.max_backoff = absl::Milliseconds(500);
  EXPECT_EQ(retry.Backoff(1), absl::Milliseconds(100));
  EXPECT_EQ(retry.Backoff(2), absl::Milliseconds(200));
  EXPECT_EQ(retry.Backoff(3), absl::Milliseconds(400));
  EXPECT_EQ(retry.Backoff(4), absl::Milliseconds(500));
  EXPECT_EQ(retry.Backoff(1000), absl::Milliseconds(500));
  EXPECT_FALSE(retry.enabled());  // the default does not retry
  EXPECT_TRUE(retry.Validate().ok());
  retry.max_attempts = 0;
  EXPECT_THAT(retry.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  ClientOptions options{.target = "a", .fallback_targets = {""}};
  EXPECT_THAT(options.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ClientRetryTest, BrokenStreamContinuesOnTheFallbackWithTheSameIdFromTheOffsetItHad) {
  FakeServer first(Script{.fail_after_blocks = 2});
  FakeServer second(Script{});
  RetryLog log;
  RetryPolicy retry = Retries(3);
  retry.observer = &log;
  auto client = ClientOf(first, second, retry);
  ASSERT_NE(client, nullptr);
  const Received got = Stream(*client, Request());
  ASSERT_TRUE(got.result.ok()) << got.result.status();
  EXPECT_EQ(got.result->stats().generated_tokens(), kTotalIds);
  EXPECT_THAT(got.ids, ElementsAreArray(AllIds()));
  EXPECT_THAT(got.bad_offsets, SizeIs(0));
  ASSERT_THAT(first.service.calls(), SizeIs(1));
  ASSERT_THAT(second.service.calls(), SizeIs(1));
  EXPECT_THAT(log.retries, ElementsAre(absl::StrCat("2 ", second.address(), " UNAVAILABLE")));
  const std::string id = first.service.calls()[0].first;
  EXPECT_FALSE(id.empty()) << "a retrying client names its requests";
  EXPECT_EQ(first.service.calls()[0].second, 0);
  EXPECT_EQ(second.service.calls()[0].first, id);
  EXPECT_EQ(second.service.calls()[0].second, 16);  // two blocks of 8 arrived
}

TEST(ClientRetryTest, TheCallersRequestIdIsKeptAndAServerThatResendsIdsIsDeduplicated) {
  FakeServer first(Script{.fail_after_blocks = 3});
  // Starts from 0 again, in blocks of 5: one straddles offset 24.
  FakeServer second(Script{.block = 5, .honor_resume = false});
  auto client = ClientOf(first, second, Retries(3));
  ASSERT_NE(client, nullptr);
  dmoe::v1::GenerateRequest request = Request();
  request.set_request_id("mine");
  const Received got = Stream(*client, request);
  ASSERT_TRUE(got.result.ok()) << got.result.status();
  EXPECT_THAT(got.ids, ElementsAreArray(AllIds()));
  EXPECT_THAT(got.bad_offsets, SizeIs(0));
  EXPECT_EQ(first.service.calls()[0].first, "mine");
  ASSERT_THAT(second.service.calls(), SizeIs(1));
  EXPECT_EQ(second.service.calls()[0], std::make_pair(std::string("mine"), int64_t{24}));
}

TEST(ClientRetryTest, OneTargetIsRetriedUntilItAnswers) {
  // A server that dies after 1 block every time: 40 ids take 5 tries of one block each.
  FakeServer flaky(Script{.fail_after_blocks = 1});
  auto client = Connected({.target = flaky.address(), .retry = Retries(10)});
  ASSERT_NE(client, nullptr);
  const Received got = Stream(*client, Request());
  ASSERT_TRUE(got.result.ok()) << got.result.status();
  EXPECT_THAT(got.ids, ElementsAreArray(AllIds()));
  EXPECT_THAT(got.bad_offsets, SizeIs(0));
  const auto calls = flaky.service.calls();
  ASSERT_THAT(calls, SizeIs(5));
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].first, calls[0].first);
    EXPECT_EQ(calls[i].second, static_cast<int64_t>(8 * i));
  }
}

TEST(ClientRetryTest, AConnectionLostAfterTheFinalEventIsNotRetried) {
  FakeServer first(Script{.fail_after_final = true});
  FakeServer second(Script{});
  auto client = ClientOf(first, second, Retries(3));
  ASSERT_NE(client, nullptr);
  int finals = 0;
  absl::StatusOr<dmoe::v1::FinalEvent> result =
      client->GenerateStream(Request(), [&](const dmoe::v1::GenerateStreamResponse& e) {
        finals += e.has_final() ? 1 : 0;
        return true;
      });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(finals, 1);
  EXPECT_THAT(second.service.calls(), SizeIs(0));
}

TEST(ClientRetryTest, AVerdictOnTheRequestIsNotRetried) {
  for (absl::StatusCode code : {absl::StatusCode::kInvalidArgument,
                                absl::StatusCode::kAborted, absl::StatusCode::kAlreadyExists}) {
    FakeServer first(Script{.error = code});
    FakeServer second(Script{});
    auto client = ClientOf(first, second, Retries(5));
    ASSERT_NE(client, nullptr);
    EXPECT_THAT(Stream(*client, Request()).result, StatusIs(code));
    EXPECT_THAT(client->Generate(Request()), StatusIs(code));
    EXPECT_THAT(second.service.calls(), SizeIs(0)) << absl::StatusCodeToString(code);
  }
}

TEST(ClientRetryTest, WithoutARetryPolicyABrokenStreamFails) {
  FakeServer first(Script{.fail_after_blocks = 2});
  FakeServer second(Script{});
  auto client = Connected({.target = first.address(), .fallback_targets = {second.address()}});
  ASSERT_NE(client, nullptr);
  const Received got = Stream(*client, Request());
  EXPECT_THAT(got.result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(got.ids, SizeIs(16));
  EXPECT_EQ(first.service.calls()[0].first, "");  // no id is made up when nothing retries
  EXPECT_THAT(second.service.calls(), SizeIs(0));
}

TEST(ClientRetryTest, UnaryGenerateRetriesOnTheFallbackWithTheSameId) {
  FakeServer first(Script{.fail_after_blocks = 0});  // unary: UNAVAILABLE
  FakeServer second(Script{});
  auto client = ClientOf(first, second, Retries(2));
  ASSERT_NE(client, nullptr);
  absl::StatusOr<dmoe::v1::GenerateResponse> response = client->Generate(Request());
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->ids(), ElementsAreArray(AllIds()));
  ASSERT_THAT(second.service.calls(), SizeIs(1));
  EXPECT_EQ(second.service.calls()[0].first, first.service.calls()[0].first);
  // The target that answered is where the next call starts.
  ASSERT_TRUE(client->Generate(Request()).ok());
  EXPECT_THAT(first.service.calls(), SizeIs(1));
  EXPECT_THAT(second.service.calls(), SizeIs(2));
}

TEST(ClientRetryTest, RetriesStopAtMaxRetryTime) {
  // Nothing listens on either port (servers started and shut down).
  std::string dead_a, dead_b;
  {
    FakeServer a(Script{}), b(Script{});
    dead_a = a.address();
    dead_b = b.address();
  }
  RetryPolicy retry = Retries(1000000);
  retry.max_retry_time = absl::Milliseconds(300);
  auto client = Connected({.target = dead_a, .fallback_targets = {dead_b}, .retry = retry});
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  EXPECT_THAT(Stream(*client, Request()).result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(client->Generate(Request()), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(ClientRetryTest, ACallerCancelIsNotRetried) {
  FakeServer first(Script{});
  FakeServer second(Script{});
  auto client = ClientOf(first, second, Retries(5));
  ASSERT_NE(client, nullptr);
  absl::StatusOr<dmoe::v1::FinalEvent> result =
      client->GenerateStream(Request(), [](const dmoe::v1::GenerateStreamResponse&) {
        return false;
      });
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(second.service.calls(), SizeIs(0));
}

}  // namespace
}  // namespace dmoe
