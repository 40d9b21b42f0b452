// The canary router in front of two real model versions (integration): two EmbeddedServers
// (scheduler + in-process model) on 127.0.0.1:0 serving tiny checkpoints with different
// seeds, a GenerationProxy on 127.0.0.1:0 in front of them.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "proto/dmoe/v1/admin.grpc.pb.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "serve/embedded_server.h"
#include "router/generation_proxy.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::router {
namespace {

dmoe_testing::TinyCheckpointDir* Checkpoint(int seed) {
  tools::RandomCheckpointSpec spec = dmoe_testing::TinySpec();
  spec.seed = seed;
  return new dmoe_testing::TinyCheckpointDir(spec);
}

class CanaryIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    v1_dir_ = Checkpoint(1);
    v2_dir_ = Checkpoint(2);
  }
  static void TearDownTestSuite() {
    delete v1_dir_;
    delete v2_dir_;
  }

  static std::unique_ptr<serve::EmbeddedServer> Serve(const dmoe_testing::TinyCheckpointDir& dir,
                                               const std::string& version) {
    serve::EmbeddedServerOptions options;
    options.api.model_dir = dir.dir();
    options.api.model_name = "tiny";
    options.api.model_version = version;
    options.num_threads = 1;
    if (!std::filesystem::exists(dir.dir() + "/tokenizer.json")) {
      options.api.mask_id = 4000;
      options.api.stop_ids = std::vector<int32_t>{4001};
    }
    auto server = serve::EmbeddedServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(v1_dir_->ok() && v2_dir_->ok());
    v1_ = Serve(*v1_dir_, "v1");
    v2_ = Serve(*v2_dir_, "v2");
    ASSERT_TRUE(v1_ && v2_);
  }

  void StartRouter(std::vector<VersionWeight> split, CanaryPolicyOptions rollback = {}) {
    registry_ = std::make_shared<prometheus::Registry>();
    DMOE_ASSERT_OK_AND_ASSIGN(
        proxy_, GenerationProxy::Create({.backends = {{"v1", v1_->address()},
                                                      {"v2", v2_->address()}},
                                         .split = std::move(split),
                                         .stable = "v1",
                                         .rollback = rollback,
                                         .registry = registry_}));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(proxy_.get());
    builder.RegisterService(&proxy_->admin_service());
    router_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                       grpc::InsecureChannelCredentials());
    generation_ = dmoe::v1::Generation::NewStub(channel);
    admin_ = dmoe::v1::RouterAdmin::NewStub(channel);
  }
  void TearDown() override {
    if (router_) router_->Shutdown(std::chrono::system_clock::now());
  }

  static dmoe::v1::GenerateRequest Request(const std::string& version = "") {
    dmoe::v1::GenerateRequest request;
    for (int id : {5, 9, 14, 20, 33}) request.mutable_prompt_ids()->add_ids(id);
    request.mutable_params()->set_max_new_tokens(4);
    request.mutable_params()->set_block_length(4);
    request.mutable_model()->set_version(version);
    return request;
  }

  static grpc::Status Call(dmoe::v1::Generation::Stub& stub, const dmoe::v1::GenerateRequest& r,
                           dmoe::v1::GenerateResponse* response, const std::string& key = "") {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!key.empty()) context.AddMetadata(kClientKeyMetadata, key);
    return stub.Generate(&context, r, response);
  }

  static dmoe_testing::TinyCheckpointDir* v1_dir_;
  static dmoe_testing::TinyCheckpointDir* v2_dir_;
  std::unique_ptr<serve::EmbeddedServer> v1_, v2_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<GenerationProxy> proxy_;
  std::unique_ptr<grpc::Server> router_;
  std::unique_ptr<dmoe::v1::Generation::Stub> generation_;
  std::unique_ptr<dmoe::v1::RouterAdmin::Stub> admin_;
};

dmoe_testing::TinyCheckpointDir* CanaryIntegrationTest::v1_dir_ = nullptr;
dmoe_testing::TinyCheckpointDir* CanaryIntegrationTest::v2_dir_ = nullptr;

TEST_F(CanaryIntegrationTest, RoutesToTheRealVersions) {
  StartRouter({{"v1", 90}, {"v2", 10}});
  grpc::ClientContext context;
  dmoe::v1::ListModelsResponse models;
  ASSERT_TRUE(generation_->ListModels(&context, {}, &models).ok());
  ASSERT_EQ(models.models_size(), 2);
  EXPECT_EQ(models.models(0).name(), "tiny");
  EXPECT_EQ(models.models(0).version(), "v1");
  EXPECT_EQ(models.models(0).traffic_percent(), 90);
  EXPECT_TRUE(models.models(0).stable());
  EXPECT_EQ(models.models(1).version(), "v2");
  EXPECT_EQ(models.models(1).traffic_percent(), 10);
  EXPECT_GT(models.models(1).vocab_size(), 0);

  // Through the router with model.version = vN: the same ids as vN's scheduler directly.
  for (auto [version, server] : {std::pair{"v1", v1_.get()}, std::pair{"v2", v2_.get()}}) {
    auto direct_stub = dmoe::v1::Generation::NewStub(
        grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
    dmoe::v1::GenerateResponse direct, routed;
    ASSERT_TRUE(Call(*direct_stub, Request(), &direct).ok());
    grpc::Status status = Call(*generation_, Request(version), &routed);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(routed.model().version(), version);
    EXPECT_THAT(routed.ids(), ::testing::ElementsAreArray(direct.ids())) << version;
  }
  // Sticky keys: the same version on every call.
  for (int i = 0; i < 10; ++i) {
    const std::string key = "tenant-" + std::to_string(i);
    dmoe::v1::GenerateResponse a, b;
    ASSERT_TRUE(Call(*generation_, Request(), &a, key).ok());
    ASSERT_TRUE(Call(*generation_, Request(), &b, key).ok());
    EXPECT_EQ(a.model().version(), b.model().version()) << key;
  }
}

TEST_F(CanaryIntegrationTest, DrainedCanaryIsRolledBack) {
  StartRouter({{"v1", 50}, {"v2", 50}}, {.min_requests = 4, .max_error_ratio = 0.05});
  for (int i = 0; i < 6; ++i) {
    dmoe::v1::GenerateResponse r;
    ASSERT_TRUE(Call(*generation_, Request("v2"), &r).ok());
  }
  v2_->Drain(absl::ZeroDuration());  // v2's scheduler goes away: UNAVAILABLE
  int failed = 0;
  for (int i = 0; i < 40; ++i) {
    dmoe::v1::GenerateResponse r;
    grpc::Status status = Call(*generation_, Request(), &r);
    if (!status.ok()) {
      ++failed;
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    }
  }
  EXPECT_EQ(failed, 1);  // 1 error out of 7 calls is over 0.05
  grpc::ClientContext context;
  dmoe::v1::GetSplitResponse split;
  ASSERT_TRUE(admin_->GetSplit(&context, {}, &split).ok());
  EXPECT_TRUE(split.status().rolled_back());
  EXPECT_EQ(split.status().last_rollback().version(), "v2");
  EXPECT_EQ(split.status().versions(0).percent(), 100);
  EXPECT_EQ(split.status().versions(1).percent(), 0);
}

}  // namespace
}  // namespace dmoe::router
