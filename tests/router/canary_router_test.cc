// dmoe-router's canary rollout over gRPC (service): a GenerationProxy + RouterAdmin on
// 127.0.0.1:0 in front of two fake Generation backends (v1, v2) on 127.0.0.1:0, called
// through real stubs. Weights, stickiness, explicit versions, live SetSplit, automatic
// rollback (failing and stopped backends), ListModels and the router's metrics.
#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "proto/dmoe/v1/admin.grpc.pb.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "router/generation_proxy.h"
#include "tests/testing/status_matchers.h"

namespace dmoe::router {
namespace {

using ::testing::HasSubstr;

// A backend that answers every call itself: response text = its tag; `fail` turns every
// generation into that error code.
class FakeGeneration final : public dmoe::v1::Generation::CallbackService {
 public:
  explicit FakeGeneration(std::string tag) : tag_(std::move(tag)) {}

  std::atomic<int> fail{0};  // a grpc::StatusCode; 0 = answer normally
  std::atomic<int> delay_ms{0};  // Generate answers this late (from its own thread)
  std::atomic<int> calls{0};

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const dmoe::v1::GenerateRequest* request,
                                     dmoe::v1::GenerateResponse* response) override {
    ++calls;
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (fail != 0) {
      reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(fail.load()), tag_ + " fails"));
      return reactor;
    }
    if (!request->model().version().empty()) {  // the router resolves versions itself
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model.version leaked"));
      return reactor;
    }
    response->set_request_id(request->request_id());
    response->set_text(tag_);
    response->add_ids(1);
    response->mutable_model()->set_name("tiny");
    if (const int delay = delay_ms.load(); delay > 0) {
      std::thread([reactor, delay] {
        absl::SleepFor(absl::Milliseconds(delay));
        reactor->Finish(grpc::Status::OK);
      }).detach();
      return reactor;
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) override {
    ++calls;
    class Writer final : public grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse> {
     public:
      Writer(const std::string& tag, int fail) {
        if (fail != 0) {
          Finish(grpc::Status(static_cast<grpc::StatusCode>(fail), tag + " fails"));
          return;
        }
        events_[0].mutable_block()->set_text(tag);
        events_[0].mutable_block()->add_ids(1);
        events_[1].mutable_final()->mutable_model()->set_name("tiny");
        StartWrite(&events_[0]);
      }
      void OnWriteDone(bool ok) override {
        if (ok && next_ < 2) {
          StartWrite(&events_[next_++]);
        } else {
          Finish(grpc::Status::OK);
        }
      }
      void OnDone() override { delete this; }

     private:
      dmoe::v1::GenerateStreamResponse events_[2];
      int next_ = 1;
    };
    return new Writer(tag_, fail);
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dmoe::v1::ListModelsRequest*,
                                       dmoe::v1::ListModelsResponse* response) override {
    dmoe::v1::ModelInfo* m = response->add_models();
    m->set_name("tiny");
    m->set_model_type(tag_);
    m->set_traffic_percent(100);
    m->set_stable(true);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const std::string tag_;
};

struct FakeBackend {
  explicit FakeBackend(const std::string& tag) : service(tag) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    address = "127.0.0.1:" + std::to_string(port);
  }
  ~FakeBackend() { Stop(); }
  void Stop() {
    if (server) server->Shutdown(std::chrono::system_clock::now());
    server.reset();
  }
  FakeGeneration service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

class CanaryRouterTest : public ::testing::Test {
 protected:
  void StartRouter(std::vector<VersionWeight> split, CanaryPolicyOptions rollback = {}) {
    registry_ = std::make_shared<prometheus::Registry>();
    DMOE_ASSERT_OK_AND_ASSIGN(
        proxy_, GenerationProxy::Create({.backends = {{"v1", v1_.address}, {"v2", v2_.address}},
                                         .split = std::move(split),
                                         .stable = "v1",
                                         .rollback = rollback,
                                         .registry = registry_}));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(proxy_.get());
    builder.RegisterService(&proxy_->admin_service());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                       grpc::InsecureChannelCredentials());
    generation_ = dmoe::v1::Generation::NewStub(channel);
    admin_ = dmoe::v1::RouterAdmin::NewStub(channel);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  // One Generate; returns the serving version ("" on error) and sets *status.
  std::string Generate(const std::string& key, const std::string& version = "",
                       grpc::Status* status = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!key.empty()) context.AddMetadata(kClientKeyMetadata, key);
    dmoe::v1::GenerateRequest request;
    request.mutable_prompt_ids()->add_ids(3);
    request.mutable_model()->set_version(version);
    dmoe::v1::GenerateResponse response;
    grpc::Status s = generation_->Generate(&context, request, &response);
    if (status) *status = s;
    if (!s.ok()) return "";
    EXPECT_EQ(response.text(), response.model().version()) << "served by the other backend";
    return response.model().version();
  }

  grpc::Status SetSplit(std::vector<VersionWeight> weights, const std::string& stable = "",
                        dmoe::v1::SplitStatus* out = nullptr) {
    grpc::ClientContext context;
    dmoe::v1::SetSplitRequest request;
    for (const VersionWeight& w : weights) {
      dmoe::v1::VersionWeight* p = request.add_weights();
      p->set_version(w.version);
      p->set_percent(w.percent);
    }
    request.set_stable(stable);
    dmoe::v1::SetSplitResponse response;
    grpc::Status s = admin_->SetSplit(&context, request, &response);
    if (out) *out = response.status();
    return s;
  }

  dmoe::v1::SplitStatus GetSplit() {
    grpc::ClientContext context;
    dmoe::v1::GetSplitResponse response;
    EXPECT_TRUE(admin_->GetSplit(&context, {}, &response).ok());
    return response.status();
  }

  // The value of one series in the registry (counter, gauge, or a histogram's count).
  double Metric(const std::string& name, const std::map<std::string, std::string>& labels) {
    for (const prometheus::MetricFamily& family : registry_->Collect()) {
      if (family.name != name) continue;
      for (const prometheus::ClientMetric& m : family.metric) {
        std::map<std::string, std::string> have;
        for (const auto& l : m.label) have[l.name] = l.value;
        bool match = true;
        for (const auto& [k, v] : labels) match = match && have[k] == v;
        if (!match) continue;
        switch (family.type) {
          case prometheus::MetricType::Counter: return m.counter.value;
          case prometheus::MetricType::Gauge: return m.gauge.value;
          case prometheus::MetricType::Histogram: return m.histogram.sample_count;
          default: return -1;
        }
      }
    }
    return -1;  // absent
  }

  FakeBackend v1_{"v1"};
  FakeBackend v2_{"v2"};
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<GenerationProxy> proxy_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<dmoe::v1::Generation::Stub> generation_;
  std::unique_ptr<dmoe::v1::RouterAdmin::Stub> admin_;
};

TEST_F(CanaryRouterTest, WeightsAreRespected) {
  StartRouter({{"v1", 90}, {"v2", 10}});
  std::map<std::string, int> by_key, random;
  for (int i = 0; i < 1000; ++i) ++by_key[Generate("client-" + std::to_string(i))];
  for (int i = 0; i < 500; ++i) ++random[Generate("")];
  // Binomial(1000, 0.1): sd 9.5; Binomial(500, 0.1): sd 6.7. Four sd either way.
  EXPECT_NEAR(by_key["v2"], 100, 38);
  EXPECT_EQ(by_key["v1"] + by_key["v2"], 1000);
  EXPECT_NEAR(random["v2"], 50, 27);
  EXPECT_EQ(random["v1"] + random["v2"], 500);
  EXPECT_EQ(v1_.service.calls + v2_.service.calls, 1500);
}

TEST_F(CanaryRouterTest, ClientKeysAreSticky) {
  StartRouter({{"v1", 90}, {"v2", 10}});
  std::map<std::string, std::string> first;
  for (int i = 0; i < 200; ++i) {
    const std::string key = "user-" + std::to_string(i);
    first[key] = Generate(key);
    EXPECT_EQ(Generate(key), first[key]) << key;
  }
  // The request field works as a key too when the metadata is absent.
  {
    grpc::ClientContext context;
    dmoe::v1::GenerateRequest request;
    request.mutable_prompt_ids()->add_ids(3);
    request.set_client_key("user-7");
    dmoe::v1::GenerateResponse response;
    ASSERT_TRUE(generation_->Generate(&context, request, &response).ok());
    EXPECT_EQ(response.model().version(), first["user-7"]);
  }
  // Widening the canary moves keys onto it only.
  ASSERT_TRUE(SetSplit({{"v1", 50}, {"v2", 50}}).ok());
  int moved = 0;
  for (const auto& [key, version] : first) {
    const std::string now = Generate(key);
    if (version == "v2") {
      EXPECT_EQ(now, "v2") << key;
    }
    moved += version == "v1" && now == "v2";
  }
  EXPECT_GT(moved, 40);  // about 80 of the ~180 v1 keys
}

TEST_F(CanaryRouterTest, ExplicitVersionAndStreams) {
  StartRouter({{"v1", 100}, {"v2", 0}});
  EXPECT_EQ(Generate("k", "v2"), "v2");
  EXPECT_EQ(Generate("k", "v1"), "v1");
  EXPECT_EQ(Generate("k"), "v1");
  grpc::Status status;
  EXPECT_EQ(Generate("k", "v3", &status), "");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model.version"));

  // GenerateStream: relayed, the final event names the version that served.
  grpc::ClientContext context;
  dmoe::v1::GenerateRequest request;
  request.mutable_prompt_ids()->add_ids(3);
  request.mutable_model()->set_version("v2");
  auto reader = generation_->GenerateStream(&context, request);
  std::vector<dmoe::v1::GenerateStreamResponse> events;
  dmoe::v1::GenerateStreamResponse event;
  while (reader->Read(&event)) events.push_back(event);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].block().text(), "v2");
  EXPECT_EQ(events[1].final().model().version(), "v2");

  grpc::ClientContext bad_context;
  request.mutable_model()->set_version("v9");
  auto bad = generation_->GenerateStream(&bad_context, request);
  while (bad->Read(&event)) {
  }
  grpc::Status bad_status = bad->Finish();
  EXPECT_EQ(bad_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad_status.error_message(), HasSubstr("model.version"));
}

TEST_F(CanaryRouterTest, AdminSetSplitValidatesAndTakesEffectLive) {
  StartRouter({{"v1", 90}, {"v2", 10}});
  auto expect_invalid = [&](std::vector<VersionWeight> w, const std::string& stable,
                            const std::string& field, const std::string& detail) {
    grpc::Status s = SetSplit(std::move(w), stable);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(field));
    EXPECT_THAT(s.error_message(), HasSubstr(detail));
  };
  expect_invalid({{"v1", 50}, {"v3", 50}}, "", "weights", "unknown version 'v3'");
  expect_invalid({{"v1", 50}, {"v2", 40}}, "", "weights", "sum to 100, got 90");
  expect_invalid({{"v1", 110}, {"v2", -10}}, "", "weights", "[0, 100]");
  expect_invalid({{"v1", 100}}, "v5", "stable", "v5");

  dmoe::v1::SplitStatus status = GetSplit();
  ASSERT_EQ(status.versions_size(), 2);
  EXPECT_EQ(status.versions(0).percent(), 90);
  EXPECT_EQ(status.versions(1).backend(), v2_.address);
  EXPECT_EQ(status.stable(), "v1");
  EXPECT_EQ(status.policy().min_requests(), 20);

  ASSERT_TRUE(SetSplit({{"v2", 100}}, "", &status).ok());
  EXPECT_EQ(status.versions(0).percent(), 0);
  EXPECT_EQ(status.versions(1).percent(), 100);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(Generate("key-" + std::to_string(i)), "v2");
  EXPECT_EQ(Metric("dmoe_canary_weight_percent", {{"model_version", "v2"}}), 100);
  EXPECT_EQ(Metric("dmoe_canary_weight_percent", {{"model_version", "v1"}}), 0);
  ASSERT_TRUE(SetSplit({{"v1", 100}, {"v2", 0}}, "v2", &status).ok());
  EXPECT_EQ(status.stable(), "v2");
  EXPECT_TRUE(status.versions(1).stable());
}

TEST_F(CanaryRouterTest, FailingCanaryIsRolledBack) {
  StartRouter({{"v1", 50}, {"v2", 50}}, {.min_requests = 10, .max_error_ratio = 0.05});
  v2_.service.fail = static_cast<int>(grpc::StatusCode::UNAVAILABLE);
  int failed = 0;
  for (int i = 0; i < 200; ++i) {
    grpc::Status status;
    Generate("", "", &status);
    failed += !status.ok();
  }
  // v2 fails until it has 10 calls in the window; then every call goes to v1.
  EXPECT_EQ(failed, 10);
  dmoe::v1::SplitStatus status = GetSplit();
  EXPECT_TRUE(status.rolled_back());
  EXPECT_EQ(status.rollbacks(), 1);
  EXPECT_EQ(status.versions(0).percent(), 100);
  EXPECT_EQ(status.versions(1).percent(), 0);
  EXPECT_EQ(status.last_rollback().version(), "v2");
  EXPECT_EQ(status.last_rollback().bound(), "error_ratio");
  EXPECT_DOUBLE_EQ(status.last_rollback().measured(), 1.0);
  EXPECT_EQ(status.versions(1).window_errors(), 10);

  EXPECT_EQ(Metric("dmoe_canary_rollbacks_total", {{"model_version", "v2"}}), 1);
  EXPECT_EQ(Metric("dmoe_canary_rollbacks_total", {{"model_version", "v1"}}), 0);
  EXPECT_EQ(Metric("dmoe_canary_weight_percent", {{"model_version", "v1"}}), 100);
  EXPECT_EQ(Metric("dmoe_canary_weight_percent", {{"model_version", "v2"}}), 0);
  EXPECT_EQ(Metric("dmoe_router_requests_total",
                   {{"model_version", "v2"}, {"grpc_code", "UNAVAILABLE"}}),
            10);
  EXPECT_EQ(Metric("dmoe_router_requests_total", {{"model_version", "v1"}, {"grpc_code", "OK"}}),
            190);
  EXPECT_EQ(Metric("dmoe_router_request_duration_seconds", {{"model_version", "v1"}}), 190);
  EXPECT_EQ(Metric("dmoe_router_request_duration_seconds", {{"model_version", "v2"}}), 10);

  // The operator promotes the canary again once fixed: a fresh window.
  v2_.service.fail = 0;
  ASSERT_TRUE(SetSplit({{"v1", 50}, {"v2", 50}}).ok());
  EXPECT_FALSE(GetSplit().rolled_back());
  for (int i = 0; i < 100; ++i) EXPECT_NE(Generate(""), "");
  EXPECT_EQ(GetSplit().rollbacks(), 1);
}

TEST_F(CanaryRouterTest, StoppedCanaryBackendIsRolledBack) {
  StartRouter({{"v1", 80}, {"v2", 20}}, {.min_requests = 5, .max_error_ratio = 0.2});
  v2_.Stop();  // calls to v2 now fail with UNAVAILABLE (connection refused)
  int failed = 0;
  for (int i = 0; i < 300; ++i) {
    grpc::Status status;
    Generate("", "", &status);
    if (!status.ok()) {
      ++failed;
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    }
  }
  EXPECT_EQ(failed, 5);
  dmoe::v1::SplitStatus status = GetSplit();
  EXPECT_TRUE(status.rolled_back());
  EXPECT_EQ(status.last_rollback().version(), "v2");
  EXPECT_EQ(status.versions(0).percent(), 100);
}

TEST_F(CanaryRouterTest, SlowCanaryIsRolledBackOnP95) {
  StartRouter({{"v1", 50}, {"v2", 50}},
              {.min_requests = 5, .max_error_ratio = 0.05,
               .max_latency_p95 = absl::Milliseconds(20)});
  v2_.service.delay_ms = 60;
  for (int i = 0; i < 100 && !GetSplit().rolled_back(); ++i) EXPECT_NE(Generate(""), "");
  dmoe::v1::SplitStatus status = GetSplit();
  EXPECT_TRUE(status.rolled_back());
  EXPECT_EQ(status.last_rollback().version(), "v2");
  EXPECT_EQ(status.last_rollback().bound(), "latency_p95_seconds");
  EXPECT_DOUBLE_EQ(status.last_rollback().limit(), 0.02);
  EXPECT_GE(status.last_rollback().measured(), 0.06);
  EXPECT_EQ(status.last_rollback().window_requests(), 5);
  EXPECT_GE(status.versions(1).window_p95_latency_seconds(), 0.06);
  EXPECT_EQ(status.versions(1).window_errors(), 0);
}

TEST_F(CanaryRouterTest, StableVersionErrorsDoNotRollBack) {
  StartRouter({{"v1", 50}, {"v2", 50}}, {.min_requests = 5});
  v1_.service.fail = static_cast<int>(grpc::StatusCode::INTERNAL);
  for (int i = 0; i < 100; ++i) Generate("");
  EXPECT_FALSE(GetSplit().rolled_back());
  EXPECT_EQ(GetSplit().versions(1).percent(), 50);
}

TEST_F(CanaryRouterTest, ListModelsShowsEveryVersionWithItsWeight) {
  StartRouter({{"v1", 90}, {"v2", 10}});
  grpc::ClientContext context;
  dmoe::v1::ListModelsResponse response;
  ASSERT_TRUE(generation_->ListModels(&context, {}, &response).ok());
  ASSERT_EQ(response.models_size(), 2);
  EXPECT_EQ(response.models(0).version(), "v1");
  EXPECT_EQ(response.models(0).model_type(), "v1");  // from the v1 backend
  EXPECT_EQ(response.models(0).traffic_percent(), 90);
  EXPECT_TRUE(response.models(0).stable());
  EXPECT_EQ(response.models(1).version(), "v2");
  EXPECT_EQ(response.models(1).model_type(), "v2");
  EXPECT_EQ(response.models(1).traffic_percent(), 10);
  EXPECT_FALSE(response.models(1).stable());

  // An unreachable version is left out; the rest still answer.
  v2_.Stop();
  grpc::ClientContext context2;
  dmoe::v1::ListModelsResponse response2;
  ASSERT_TRUE(generation_->ListModels(&context2, {}, &response2).ok());
  ASSERT_EQ(response2.models_size(), 1);
  EXPECT_EQ(response2.models(0).version(), "v1");
}

TEST(GenerationProxyOptionsTest, Validation) {
  EXPECT_THAT(GenerationProxy::Create({}).status(),
              dmoe_testing::StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("backends")));
  EXPECT_THAT(GenerationProxy::Create({.backends = {{"v1", "127.0.0.1:1"}},
                                       .split = {{"v1", 90}}})
                  .status(),
              dmoe_testing::StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("weights")));
  // A router without a registry works and exports nothing.
  DMOE_EXPECT_OK(GenerationProxy::Create({.backends = {{"v1", "127.0.0.1:1"}}}).status());
}

}  // namespace
}  // namespace dmoe::router
