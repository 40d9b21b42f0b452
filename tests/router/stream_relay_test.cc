// dmoe-router's GenerateStream relay (service): a GenerationProxy on 127.0.0.1:0 in front of
// one fake streaming backend on 127.0.0.1:0. The relay has no thread per stream (a client
// read reactor chained to the server write reactor), so these check what the threads used to
// guarantee: long streams arrive whole and in order, many streams run at once, the backend's
// error reaches the caller, the caller's cancel and deadline reach the backend, and the
// caller's authorization metadata is passed on.
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/auth/authorize.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "router/generation_proxy.h"
#include "tests/testing/status_matchers.h"

namespace dmoe::router {
namespace {

// A streaming backend whose behaviour the request picks: params.max_new_tokens block events
// (offset i, ids {i}) from resume_from_offset on, then by request_id: "" a final event and OK;
// "fail" ABORTED; "hold" nothing more until the call is cancelled; "drop" (a scheduler that
// dies mid-stream) UNAVAILABLE after half the events when resume_from_offset is 0, else the
// rest and a final event.
class StreamingBackend final : public dmoe::v1::Generation::CallbackService {
 public:
  grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) override {
    {
      absl::MutexLock lock(&mu_);
      ++calls_;
      last_deadline_ = context->deadline();
      auto it = context->client_metadata().find(auth::kAuthorizationMetadata);
      last_authorization_ = it == context->client_metadata().end()
                                ? ""
                                : std::string(it->second.data(), it->second.size());
      resume_offsets_.push_back(request->resume_from_offset());
      request_ids_.push_back(request->request_id());
    }
    return new Writer(this, request->params().max_new_tokens(), request->request_id(),
                      request->resume_from_offset());
  }
  std::vector<int64_t> resume_offsets() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return resume_offsets_;
  }
  std::vector<std::string> request_ids() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return request_ids_;
  }

  void WaitForCancellations(int n) ABSL_LOCKS_EXCLUDED(mu_) {
    struct Want {
      const int* count;
      int n;
    } want{&cancellations_, n};
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(+[](Want* w) { return *w->count >= w->n; }, &want));
  }
  int calls() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  std::chrono::system_clock::time_point last_deadline() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return last_deadline_;
  }
  std::string last_authorization() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return last_authorization_;
  }

 private:
  class Writer final : public grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse> {
   public:
    Writer(StreamingBackend* backend, int64_t events, std::string mode, int64_t start)
        : backend_(backend), events_(events), mode_(std::move(mode)), start_(start),
          sent_(start) {
      Next();
    }
    void OnWriteDone(bool ok) override {
      if (!ok) {
        FinishOnce(grpc::Status::CANCELLED);
        return;
      }
      Next();
    }
    void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
      backend_->CountCancellation();
      bool finish = false;
      {
        absl::MutexLock lock(&mu_);
        cancelled_ = true;
        finish = holding_;
      }
      if (finish) FinishOnce(grpc::Status::CANCELLED);
    }
    void OnDone() override { delete this; }

   private:
    void Next() ABSL_LOCKS_EXCLUDED(mu_) {
      if (mode_ == "drop" && start_ == 0 && sent_ == events_ / 2) {
        FinishOnce(grpc::Status(grpc::StatusCode::UNAVAILABLE, "scheduler went away"));
      } else if (sent_ < events_) {
        event_.Clear();
        event_.mutable_block()->set_offset(sent_);
        event_.mutable_block()->add_ids(static_cast<int32_t>(sent_));
        ++sent_;
        StartWrite(&event_);
      } else if (mode_ == "fail") {
        FinishOnce(grpc::Status(grpc::StatusCode::ABORTED, "backend broke"));
      } else if (mode_ == "hold") {
        bool finish = false;
        {
          absl::MutexLock lock(&mu_);
          holding_ = true;
          finish = cancelled_;
        }
        if (finish) FinishOnce(grpc::Status::CANCELLED);
      } else if (!final_sent_) {
        final_sent_ = true;
        event_.Clear();
        event_.mutable_final()->mutable_stats()->set_generated_tokens(events_);
        event_.mutable_final()->mutable_model()->set_name("tiny");
        StartWrite(&event_);
      } else {
        FinishOnce(grpc::Status::OK);
      }
    }
    void FinishOnce(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
      {
        absl::MutexLock lock(&mu_);
        if (finished_) return;
        finished_ = true;
      }
      Finish(status);
    }

    StreamingBackend* const backend_;
    const int64_t events_;
    const std::string mode_;
    const int64_t start_;
    int64_t sent_;
    bool final_sent_ = false;
    dmoe::v1::GenerateStreamResponse event_;
    absl::Mutex mu_;
    bool holding_ ABSL_GUARDED_BY(mu_) = false;
    bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
    bool finished_ ABSL_GUARDED_BY(mu_) = false;
  };

  void CountCancellation() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    ++cancellations_;
  }

  absl::Mutex mu_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  int cancellations_ ABSL_GUARDED_BY(mu_) = 0;
  std::chrono::system_clock::time_point last_deadline_ ABSL_GUARDED_BY(mu_);
  std::string last_authorization_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> resume_offsets_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> request_ids_ ABSL_GUARDED_BY(mu_);
};

// One stream read to its end on the callback API (as a load generator would): the events and
// the status.
class StreamCall final : public grpc::ClientReadReactor<dmoe::v1::GenerateStreamResponse> {
 public:
  StreamCall(dmoe::v1::Generation::Stub* stub, const dmoe::v1::GenerateRequest& request)
      : request_(request) {
    stub->async()->GenerateStream(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    events.push_back(event_);
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& s) override {
    status = s;
    done.Notify();
  }

  std::vector<dmoe::v1::GenerateStreamResponse> events;  // read after `done`
  grpc::Status status;
  absl::Notification done;

 private:
  grpc::ClientContext context_;
  const dmoe::v1::GenerateRequest request_;
  dmoe::v1::GenerateStreamResponse event_;
};

class StreamRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    {
      grpc::ServerBuilder builder;
      int port = 0;
      builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
      builder.RegisterService(&backend_);
      backend_server_ = builder.BuildAndStart();
      ASSERT_NE(port, 0);
      backend_address_ = "127.0.0.1:" + std::to_string(port);
    }
    registry_ = std::make_shared<prometheus::Registry>();
    GenerationProxyOptions options;
    options.backends = {{.version = "v1", .address = backend_address_}};
    options.registry = registry_;
    DMOE_ASSERT_OK_AND_ASSIGN(proxy_, GenerationProxy::Create(options));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(proxy_.get());
    router_server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    generation_ = dmoe::v1::Generation::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (router_server_) router_server_->Shutdown(std::chrono::system_clock::now());
    if (backend_server_) backend_server_->Shutdown(std::chrono::system_clock::now());
  }

  static dmoe::v1::GenerateRequest Request(int64_t events, const std::string& mode = "") {
    dmoe::v1::GenerateRequest request;
    request.mutable_prompt_ids()->add_ids(3);
    request.mutable_params()->set_max_new_tokens(events);
    request.set_request_id(mode);
    return request;
  }

  // dmoe_router_requests_total for v1 and `code` (0 when absent).
  double Calls(const std::string& code) {
    for (const prometheus::MetricFamily& family : registry_->Collect()) {
      if (family.name != "dmoe_router_requests_total") continue;
      for (const prometheus::ClientMetric& m : family.metric) {
        std::map<std::string, std::string> labels;
        for (const auto& l : m.label) labels[l.name] = l.value;
        if (labels["model_version"] == "v1" && labels["grpc_code"] == code) {
          return m.counter.value;
        }
      }
    }
    return 0;
  }
  // The router records a call when its backend call ends, which for a cancelled caller may be
  // after the caller's own Finish returned.
  void WaitForCalls(const std::vector<std::string>& codes, double n) {
    auto sum = [&] {
      double total = 0;
      for (const std::string& code : codes) total += Calls(code);
      return total;
    };
    while (sum() < n) absl::SleepFor(absl::Milliseconds(5));
  }

  StreamingBackend backend_;
  std::unique_ptr<grpc::Server> backend_server_;
  std::string backend_address_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<GenerationProxy> proxy_;
  std::unique_ptr<grpc::Server> router_server_;
  std::unique_ptr<dmoe::v1::Generation::Stub> generation_;
};

TEST_F(StreamRelayTest, LongStreamArrivesWholeAndInOrder) {
  constexpr int kEvents = 3000;
  grpc::ClientContext context;
  auto reader = generation_->GenerateStream(&context, Request(kEvents));
  dmoe::v1::GenerateStreamResponse event;
  int64_t next = 0;
  int finals = 0;
  while (reader->Read(&event)) {
    if (event.has_block()) {
      ASSERT_EQ(event.block().offset(), next);
      ASSERT_THAT(event.block().ids(), ::testing::ElementsAre(next));
      ++next;
    } else {
      ASSERT_TRUE(event.has_final());
      ++finals;
      EXPECT_EQ(event.final().model().version(), "v1");  // the router names the version
      EXPECT_EQ(event.final().stats().generated_tokens(), kEvents);
    }
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(next, kEvents);
  EXPECT_EQ(finals, 1);
  EXPECT_EQ(Calls("OK"), 1);
}

TEST_F(StreamRelayTest, ManyConcurrentStreamsAllComplete) {
  constexpr int kStreams = 300;
  constexpr int kEvents = 20;
  std::vector<std::unique_ptr<StreamCall>> calls;
  for (int i = 0; i < kStreams; ++i) {
    calls.push_back(std::make_unique<StreamCall>(generation_.get(), Request(kEvents)));
  }
  for (auto& call : calls) {
    call->done.WaitForNotification();
    EXPECT_TRUE(call->status.ok()) << call->status.error_message();
    ASSERT_EQ(call->events.size(), kEvents + 1);
    for (int i = 0; i < kEvents; ++i) EXPECT_EQ(call->events[i].block().offset(), i);
    EXPECT_EQ(call->events.back().final().model().version(), "v1");
  }
  EXPECT_EQ(Calls("OK"), kStreams);
}

TEST_F(StreamRelayTest, BackendErrorReachesTheCaller) {
  grpc::ClientContext context;
  auto reader = generation_->GenerateStream(&context, Request(3, "fail"));
  dmoe::v1::GenerateStreamResponse event;
  int events = 0;
  while (reader->Read(&event)) ++events;
  grpc::Status status = reader->Finish();
  EXPECT_EQ(events, 3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(status.error_message(), "backend broke");
  EXPECT_EQ(Calls("ABORTED"), 1);  // recorded before the caller saw the status
}

TEST_F(StreamRelayTest, CallerCancelCancelsTheBackendCall) {
  grpc::ClientContext context;
  auto reader = generation_->GenerateStream(&context, Request(1, "hold"));
  dmoe::v1::GenerateStreamResponse event;
  ASSERT_TRUE(reader->Read(&event));
  EXPECT_EQ(event.block().offset(), 0);
  context.TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  backend_.WaitForCancellations(1);  // hangs (ctest's timeout) if the cancel is not passed on
  WaitForCalls({"CANCELLED"}, 1);
}

TEST_F(StreamRelayTest, CallerDeadlineReachesTheBackend) {
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(2);
  grpc::ClientContext context;
  context.set_deadline(deadline);
  auto reader = generation_->GenerateStream(&context, Request(1, "hold"));
  dmoe::v1::GenerateStreamResponse event;
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The router's backend call ends by its own deadline or by the caller's cancel, whichever
  // gRPC sees first.
  WaitForCalls({"DEADLINE_EXCEEDED", "CANCELLED"}, 1);
  if (backend_.calls() > 0) {  // the call got there before the deadline (a loaded machine...)
    backend_.WaitForCancellations(1);
    // The backend's deadline is the caller's (sent as a timeout: equal up to transit time).
    EXPECT_LT(backend_.last_deadline(), deadline + std::chrono::seconds(1));
    EXPECT_GT(backend_.last_deadline(), deadline - std::chrono::seconds(60));
  }
}

TEST_F(StreamRelayTest, AuthorizationMetadataIsPassedOn) {
  grpc::ClientContext context;
  context.AddMetadata(auth::kAuthorizationMetadata, "Bearer stream-key");
  auto reader = generation_->GenerateStream(&context, Request(1));
  dmoe::v1::GenerateStreamResponse event;
  while (reader->Read(&event)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(backend_.last_authorization(), "Bearer stream-key");
}

TEST_F(StreamRelayTest, BackendDownIsUnavailable) {
  backend_server_->Shutdown(std::chrono::system_clock::now());
  backend_server_.reset();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto reader = generation_->GenerateStream(&context, Request(1));
  dmoe::v1::GenerateStreamResponse event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

// A scheduler lost mid-stream: the router calls it again at the offset the caller has, so the
// caller sees every block once, in order, and a final event; the request id is the same on
// both calls (made up by the router when the caller gave none).
TEST_F(StreamRelayTest, AStreamLostMidwayIsReattachedAtTheCallersOffset) {
  for (const std::string id : {"drop", ""}) {
    SCOPED_TRACE("request id '" + id + "'");
    const size_t calls_before = backend_.resume_offsets().size();
    dmoe::v1::GenerateRequest request = Request(10, "drop");
    StreamCall call(generation_.get(), request);
    call.done.WaitForNotification();
    ASSERT_TRUE(call.status.ok()) << call.status.error_message();
    ASSERT_EQ(call.events.size(), 11u);
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(call.events[i].has_block()) << i;
      EXPECT_EQ(call.events[i].block().offset(), i);
    }
    EXPECT_TRUE(call.events[10].has_final());
    EXPECT_EQ(call.events[10].final().model().version(), "v1");
    const std::vector<int64_t> offsets = backend_.resume_offsets();
    ASSERT_EQ(offsets.size(), calls_before + 2);
    EXPECT_EQ(offsets[calls_before], 0);
    EXPECT_EQ(offsets[calls_before + 1], 5);
  }
  EXPECT_EQ(Calls("OK"), 2);
}

TEST_F(StreamRelayTest, TheRouterNamesARequestWithoutAnId) {
  dmoe::v1::GenerateRequest request = Request(2);
  StreamCall call(generation_.get(), request);
  call.done.WaitForNotification();
  ASSERT_TRUE(call.status.ok());
  const std::vector<std::string> ids = backend_.request_ids();
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids[0].rfind("router-", 0), 0u) << ids[0];
}

// A backend that is down when the stream starts is the caller's error at once (not after the
// re-attach timeout): the canary policy and the caller's own retries need to know.
TEST_F(StreamRelayTest, ABackendDownFromTheStartFailsAtOnce) {
  backend_server_->Shutdown(std::chrono::system_clock::now());
  backend_server_.reset();
  const absl::Time start = absl::Now();
  StreamCall call(generation_.get(), Request(1));
  call.done.WaitForNotification();
  EXPECT_EQ(call.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

}  // namespace
}  // namespace dmoe::router
