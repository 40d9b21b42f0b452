// Service tier: real ExpertServers (callback API) on 127.0.0.1:0 and over in-process channels,
// called through GrpcExpertTransport / the generated stub. Same bits as LocalExpertExecutor,
// malformed requests are INVALID_ARGUMENT naming the field while the server keeps serving,
// deadlines, health, large messages, graceful shutdown and failover over real sockets.
#include "expert_service/expert_server.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "engine/engine.h"
#include "model/cpu/make_kernels.h"
#include "expert_service/expert_engine.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/dmoe/v1/expert.grpc.pb.h"
#include "tests/transport/expert_test_util.h"
#include "transport/grpc_expert_transport.h"
#include "transport/sharded_expert_executor.h"

namespace dmoe::expert {
namespace {

using ::dmoe::expert_testing::BitIdentical;
using ::dmoe::expert_testing::Params;
using ::dmoe::expert_testing::Prompt;
using ::testing::HasSubstr;

constexpr int64_t kHidden = 64;

struct Shard {
  int64_t first, last;
  std::unique_ptr<ExpertEngine> engine;
  std::unique_ptr<ExpertServer> server;
};

std::unique_ptr<Shard> StartShard(const std::string& dir, int64_t first, int64_t last) {
  auto shard = std::make_unique<Shard>();
  shard->first = first;
  shard->last = last;
  auto engine = ExpertEngine::Create(
      {.model_dir = dir, .expert_first = first, .expert_last = last, .num_workers = 2});
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return nullptr;
  shard->engine = *std::move(engine);
  auto server = ExpertServer::Create({.listen_address = "127.0.0.1:0"}, *shard->engine);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  shard->server = *std::move(server);
  return shard;
}

std::shared_ptr<transport::ExpertTransport> TcpTransport(const ExpertServer& server) {
  auto transport = transport::GrpcExpertTransport::Create({.target = server.address()});
  EXPECT_TRUE(transport.ok()) << transport.status();
  return *std::move(transport);
}

// A well-formed request of rows with deterministic activations.
v1::RunExpertsRequest MakeRequest(int64_t layer, const std::vector<int32_t>& ids) {
  v1::RunExpertsRequest request;
  request.set_request_id("test");
  request.set_layer(layer);
  std::vector<float> hidden(ids.size() * kHidden);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = static_cast<float>(i % 13) / 7.0f - 0.9f;
  request.mutable_hidden()->set_dtype(v1::DTYPE_F32);
  request.mutable_hidden()->add_shape(static_cast<int64_t>(ids.size()));
  request.mutable_hidden()->add_shape(kHidden);
  request.mutable_hidden()->set_data(hidden.data(), hidden.size() * sizeof(float));
  request.mutable_expert_ids()->set_dtype(v1::DTYPE_I32);
  request.mutable_expert_ids()->add_shape(static_cast<int64_t>(ids.size()));
  request.mutable_expert_ids()->set_data(ids.data(), ids.size() * sizeof(int32_t));
  return request;
}

enum class ChannelKind { kInProcess, kTcp };

class ExpertServerTest : public ::testing::TestWithParam<ChannelKind> {
 protected:
  static void SetUpTestSuite() {
    auto tiny = expert_testing::TinyModel::Create();
    ASSERT_TRUE(tiny.ok()) << tiny.status();
    tiny_ = tiny->release();
    shards_ = new std::vector<std::unique_ptr<Shard>>();
    for (auto [first, last] : std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {5, 11}, {11, 16}}) {
      shards_->push_back(StartShard(tiny_->dir(), first, last));
      ASSERT_NE(shards_->back(), nullptr);
    }
  }
  static void TearDownTestSuite() {
    delete shards_;
    delete tiny_;
  }

  std::shared_ptr<transport::ExpertTransport> Transport(Shard& shard) {
    if (GetParam() == ChannelKind::kTcp) return TcpTransport(*shard.server);
    return std::make_shared<transport::GrpcExpertTransport>(
        shard.server->InProcessChannel(), absl::StrCat("inproc:", shard.server->address()));
  }
  std::unique_ptr<v1::ExpertService::Stub> RawStub(Shard& shard) {
    return v1::ExpertService::NewStub(
        GetParam() == ChannelKind::kTcp
            ? grpc::CreateChannel(shard.server->address(), grpc::InsecureChannelCredentials())
            : shard.server->InProcessChannel());
  }

  static expert_testing::TinyModel* tiny_;
  static std::vector<std::unique_ptr<Shard>>* shards_;
};

expert_testing::TinyModel* ExpertServerTest::tiny_ = nullptr;
std::vector<std::unique_ptr<Shard>>* ExpertServerTest::shards_ = nullptr;

TEST_P(ExpertServerTest, ThreeShardsOverGrpcAreBitIdenticalToLocal) {
  transport::ExpertPlacement placement{.version = 1};
  for (auto& shard : *shards_) {
    placement.shards.push_back({shard->first, shard->last, {Transport(*shard)}});
  }
  auto executor = transport::ShardedExpertExecutor::Create({.num_experts = 16}, std::move(placement));
  ASSERT_TRUE(executor.ok()) << executor.status();
  absl::Status check = (*executor)->CheckShards(tiny_->config(), absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(check.ok()) << check;

  auto kernels = model::MakeKernels("cpu", 2);
  ASSERT_TRUE(kernels.ok());
  model::LocalExpertExecutor local(tiny_->full_weights(), **kernels);
  const std::vector<std::vector<int32_t>> sequences = {Prompt(6, 1), Prompt(40, 2)};
  auto want = expert_testing::ForwardLogits(tiny_->full(), **kernels, local, sequences);
  auto got = expert_testing::ForwardLogits(tiny_->attention(), **kernels, **executor, sequences);
  ASSERT_TRUE(want.ok() && got.ok()) << got.status();
  for (size_t i = 0; i < want->size(); ++i) {
    EXPECT_TRUE(BitIdentical((*want)[i], (*got)[i])) << "sequence " << i;
  }

  const std::vector<std::vector<int32_t>> prompts = {Prompt(9, 3), Prompt(33, 4)};
  const engine::GenerationParams params = Params(0.5f, 8, 20);
  auto want_ids = expert_testing::Generate(tiny_->full(), **kernels, local, prompts, params);
  auto got_ids = expert_testing::Generate(tiny_->attention(), **kernels, **executor, prompts, params);
  ASSERT_TRUE(want_ids.ok()) << want_ids.status();
  ASSERT_TRUE(got_ids.ok()) << got_ids.status();
  EXPECT_EQ(*want_ids, *got_ids);
  EXPECT_EQ((*executor)->stats().failed_calls, 0);
  EXPECT_GT((*executor)->stats().calls, 0);
}

TEST_P(ExpertServerTest, GetShardInfoReportsTheRange) {
  auto info = Transport(*(*shards_)[1])->GetShardInfo(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->expert_first, 5);
  EXPECT_EQ(info->expert_last, 11);
  EXPECT_EQ(info->hidden_size, kHidden);
  EXPECT_EQ(info->model_type, "llada2_moe");
  EXPECT_EQ(info->config_fingerprint, (*shards_)[1]->engine->info().config_fingerprint);
}

TEST_P(ExpertServerTest, MalformedRequestsAreInvalidArgumentAndTheServerKeepsServing) {
  Shard& shard = *(*shards_)[1];  // experts [5, 11)
  auto stub = RawStub(shard);
  struct Case {
    std::string name;
    std::function<void(v1::RunExpertsRequest&)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"unknown layer", [](auto& r) { r.set_layer(9); }, "layer: 9 is not a MoE layer"},
      {"dense layer", [](auto& r) { r.set_layer(0); }, "layer: 0"},
      {"wrong dtype", [](auto& r) { r.mutable_hidden()->set_dtype(v1::DTYPE_BF16); },
       "hidden.dtype: expected F32, got BF16"},
      {"unset dtype", [](auto& r) { r.mutable_hidden()->clear_dtype(); },
       "hidden.dtype: expected F32, got UNSPECIFIED"},
      {"wrong shape", [](auto& r) { r.mutable_hidden()->set_shape(1, 32); },
       "hidden.shape: expected [n, 64], got [3, 32]"},
      {"short data", [](auto& r) { r.mutable_hidden()->mutable_data()->resize(100); },
       "hidden.data: expected 768 bytes"},
      {"ids dtype", [](auto& r) { r.mutable_expert_ids()->set_dtype(v1::DTYPE_F32); },
       "expert_ids.dtype"},
      {"ids count", [](auto& r) { r.mutable_expert_ids()->set_shape(0, 4); },
       "expert_ids.shape: expected [3]"},
      {"expert out of range", [](auto& r) {
         int32_t e = 11;
         r.mutable_expert_ids()->mutable_data()->replace(4, 4, reinterpret_cast<char*>(&e), 4);
       }, "expert_ids[1]: expert 11 is outside this shard's range [5, 11)"},
  };
  for (const Case& c : cases) {
    v1::RunExpertsRequest request = MakeRequest(1, {5, 6, 10});
    c.mutate(request);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::RunExpertsResponse response;
    grpc::Status status = stub->RunExperts(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(status.error_message(), HasSubstr(c.message)) << c.name;
  }
  // Still serving, with the right answer shape.
  grpc::ClientContext context;
  v1::RunExpertsResponse response;
  v1::RunExpertsRequest good = MakeRequest(2, {5, 6, 10});
  good.set_placement_version(42);
  grpc::Status status = stub->RunExperts(&context, good, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.output().dtype(), v1::DTYPE_F32);
  EXPECT_THAT(response.output().shape(), ::testing::ElementsAre(3, kHidden));
  EXPECT_EQ(response.output().data().size(), 3 * kHidden * sizeof(float));
  EXPECT_EQ(response.placement_version(), 42u);
}

TEST_P(ExpertServerTest, TransportErrorsNameTheAddress) {
  auto transport = Transport(*(*shards_)[0]);
  std::vector<float> hidden(2 * kHidden, 0.1f), out(2 * kHidden);
  std::vector<int32_t> ids = {0, 7};  // 7 is not in [0, 5)
  absl::Status status = transport->RunExperts(
      {.layer = 1, .num_rows = 2, .hidden_size = kHidden, .hidden = hidden.data(), .expert_ids = ids.data()},
      absl::Now() + absl::Seconds(10), out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(transport->address()));
  EXPECT_THAT(std::string(status.message()), HasSubstr("expert_ids[1]"));
}

TEST_P(ExpertServerTest, LargeCallsPassAndShortDeadlinesExpire) {
  Shard& shard = *(*shards_)[2];
  auto transport = Transport(shard);
  // 30000 rows: 7.7 MB each way, above gRPC's 4 MiB default message limit.
  const int64_t n = 30000;
  std::vector<float> hidden(n * kHidden), out(n * kHidden);
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(11 + i % 5);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = static_cast<float>(i % 17) / 9.0f - 0.8f;
  transport::ExpertRows rows{.layer = 2, .num_rows = n, .hidden_size = kHidden,
                             .hidden = hidden.data(), .expert_ids = ids.data()};
  absl::Status status = transport->RunExperts(rows, absl::Now() + absl::Milliseconds(1), out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(transport->address()));
  status = transport->RunExperts(rows, absl::Now() + absl::Seconds(30), out.data());
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_NE(out[n * kHidden - 1], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Channels, ExpertServerTest,
                         ::testing::Values(ChannelKind::kInProcess, ChannelKind::kTcp),
                         [](const auto& info) {
                           return info.param == ChannelKind::kTcp ? std::string("Tcp")
                                                                  : std::string("InProcess");
                         });

// grpc.health.v1.Health/Check through a generic stub (no generated health code needed).
// Returns the HealthCheckResponse bytes, or the error.
absl::StatusOr<std::string> HealthCheck(const std::string& address, const std::string& service) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  std::string request_bytes;
  if (!service.empty()) {  // HealthCheckRequest{service = 1}
    request_bytes = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return bytes;
}

TEST(ExpertServerLifecycleTest, HealthShutdownAndFailoverAcrossRealServers) {
  auto tiny = expert_testing::TinyModel::Create();
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  auto a = StartShard((*tiny)->dir(), 0, 16);
  auto b = StartShard((*tiny)->dir(), 0, 16);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::string kServing("\x08\x01", 2);  // HealthCheckResponse{status = SERVING}
  for (const std::string& service : {std::string(), std::string(kExpertServiceName)}) {
    auto health = HealthCheck(a->server->address(), service);
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(*health, kServing) << "service '" << service << "'";
  }

  auto executor = transport::ShardedExpertExecutor::Create(
      {.num_experts = 16}, {.shards = {{0, 16, {TcpTransport(*a->server), TcpTransport(*b->server)}}}});
  ASSERT_TRUE(executor.ok()) << executor.status();
  auto kernels = model::MakeKernels("cpu", 2);
  ASSERT_TRUE(kernels.ok());
  model::LocalExpertExecutor local((*tiny)->full_weights(), **kernels);
  const std::vector<std::vector<int32_t>> prompts = {Prompt(11, 7)};
  const engine::GenerationParams params = Params(0.5f, 8, 24);
  auto want = expert_testing::Generate((*tiny)->full(), **kernels, local, prompts, params);
  ASSERT_TRUE(want.ok()) << want.status();

  // Replica a drains after the second forward; the rest of the generation runs on b.
  auto got = expert_testing::Generate(
      (*tiny)->attention(), **kernels, **executor, prompts, params, [&](int64_t forward) {
        if (forward == 1) a->server->Shutdown(absl::Now() + absl::Seconds(5));
      });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*want, *got);
  EXPECT_GT((*executor)->stats().failed_calls, 0);

  // A stopped server refuses calls: UNAVAILABLE, naming it.
  auto direct = TcpTransport(*a->server);
  std::vector<float> hidden(kHidden, 0.5f), out(kHidden);
  int32_t id = 3;
  absl::Status status = direct->RunExperts(
      {.layer = 1, .num_rows = 1, .hidden_size = kHidden, .hidden = hidden.data(), .expert_ids = &id},
      absl::Now() + absl::Seconds(5), out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(a->server->address()));

  // Both gone: the executor reports the layer and the range.
  b->server->Shutdown(absl::Now());
  auto logits = expert_testing::ForwardLogits((*tiny)->attention(), **kernels, **executor, {Prompt(5, 1)});
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kUnavailable) << logits.status();
  EXPECT_THAT(std::string(logits.status().message()),
              HasSubstr("layer 1: no live replica for experts [0, 16)"));
}

}  // namespace
}  // namespace dmoe::expert
