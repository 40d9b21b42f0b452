// NCCL pieces: the library version (runs everywhere, no GPU needed); with a GPU, the dispatch
// and combine of MoE layers through NCCL self send/recv on one device (a one-rank
// communicator that is both the attention rank and the expert rank) equal the in-process
// transport bit for bit; the GPU expert compute behind NCCL matches the CPU experts; a missing
// peer gives DEADLINE_EXCEEDED within the timeout instead of a hang. The communicators of the
// transport tests get their unique id from a real scheduler Cluster service over gRPC
// (Cluster.GetCommunicator), as pods do.
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/nccl/nccl_communicator.h"
#include "expert_service/expert_engine.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/device_worker.h"
#include "model/moe_routing.h"
#include "scheduler/cluster_server.h"
#include "cluster/communicator_client.h"
#include "scheduler/membership.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/transport/expert_test_util.h"
#include "expert_service/in_process_expert_transport.h"
#include "transport/nccl/nccl_expert_exchange.h"
#include "transport/nccl/nccl_expert_transport.h"
#include "transport/sharded_expert_executor.h"

namespace dmoe::transport {
namespace {

using gpu::DeviceContext;
using gpu::DeviceWorker;
using gpu_testing::Nmse;
using gpu_testing::RandomFloats;

TEST(NcclVersionTest, LinkedLibraryMatchesTheHeader) {
  auto version = nccl::NcclVersion();
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_GE(*version, NCCL_VERSION(2, 18, 0));  // non-blocking init + ncclCommGetAsyncError
  EXPECT_EQ(*version / 10000, NCCL_MAJOR);
}

TEST(NcclCommunicatorOptionsTest, ValidateNamesTheField) {
  nccl::NcclCommunicatorOptions o;
  o.unique_id = "short";
  o.num_ranks = 2;
  o.rank = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.unique_id = std::string(128, 'x');
  EXPECT_TRUE(o.Validate().ok());
  o.rank = 2;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclCommunicatorTest, MissingPeerTimesOutInsteadOfHanging) {
  DMOE_GPU_TEST_OR_SKIP();
  auto worker = DeviceWorker::Create({});
  ASSERT_TRUE(worker.ok()) << worker.status();
  const absl::Time begin = absl::Now();
  absl::Status status = (*worker)->Run([](DeviceContext&) -> absl::Status {
    auto id = nccl::NewUniqueId();
    if (!id.ok()) return id.status();
    // Rank 1 never joins.
    auto comm = nccl::NcclCommunicator::Create(
        {.unique_id = *id, .num_ranks = 2, .rank = 0, .timeout = absl::Seconds(3)});
    return comm.status();
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_LT(absl::Now() - begin, absl::Seconds(60));
}

class NcclExpertTransportTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tiny = expert_testing::TinyModel::Create();
    ASSERT_TRUE(tiny.ok()) << tiny.status();
    tiny_ = tiny->release();
  }
  static void TearDownTestSuite() {
    delete tiny_;
    tiny_ = nullptr;
  }

  void SetUp() override {
    DMOE_GPU_TEST_OR_SKIP();
    ASSERT_NE(tiny_, nullptr);
    auto engine = expert::ExpertEngine::Create({.model_dir = tiny_->dir()});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    inproc_ = std::make_shared<expert::InProcessExpertTransport>(*engine_, "cpu");
    auto worker = DeviceWorker::Create({});
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
    // The scheduler's Cluster service, which hands out the communicator ids.
    cluster_ = std::make_unique<scheduler::ClusterServer>(membership_, "");
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(cluster_.get());
    scheduler_ = builder.BuildAndStart();
    ASSERT_TRUE(scheduler_ != nullptr && port != 0);
    scheduler_address_ = absl::StrCat("127.0.0.1:", port);
  }

  void TearDown() override {
    if (scheduler_) scheduler_->Shutdown();
    transports_.clear();  // frees staging on the device thread
    if (worker_ != nullptr) {
      absl::Status s = worker_->Run([&](DeviceContext&) {
        exchanges_.clear();
        comms_.clear();
        gpu_weights_.reset();
        return absl::OkStatus();
      });
      EXPECT_TRUE(s.ok()) << s;
    }
    worker_.reset();
  }

  // A one-rank communicator whose exchange serves rank 0 (itself) with `serve`, and a
  // transport to it. `make_serve` runs on the device thread.
  std::shared_ptr<NcclExpertTransport> SelfTransport(
      const std::function<absl::StatusOr<NcclServeFn>()>& make_serve) {
    const int64_t h = tiny_->config().hidden_size;
    NcclExpertExchange* exchange = nullptr;
    auto id = cluster::FetchCommunicatorId(scheduler_address_,
                                             absl::StrCat("self-", groups_++), 0,
                                             absl::Now() + absl::Seconds(10));
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return nullptr;
    absl::Status s = worker_->Run([&](DeviceContext&) -> absl::Status {
      auto comm = nccl::NcclCommunicator::Create({.unique_id = id->unique_id,
                                                  .num_ranks = 1,
                                                  .rank = 0,
                                                  .timeout = absl::Seconds(30)});
      if (!comm.ok()) return comm.status();
      comms_.push_back(*std::move(comm));
      auto serve = make_serve();
      if (!serve.ok()) return serve.status();
      auto x = NcclExpertExchange::Create(
          *comms_.back(), {.hidden_size = h, .serve_peers = {0}, .max_rows_per_peer = 512},
          *std::move(serve));
      if (!x.ok()) return x.status();
      exchanges_.push_back(*std::move(x));
      exchange = exchanges_.back().get();
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return nullptr;
    auto t = NcclExpertTransport::Create(
        *worker_, *exchange, {.expert_rank = 0, .shard = engine_->info(), .max_rows = 512});
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return nullptr;
    transports_.push_back(std::shared_ptr<NcclExpertTransport>(std::move(*t)));
    return transports_.back();
  }

  std::unique_ptr<ShardedExpertExecutor> Executor(std::vector<ExpertShard> shards) {
    auto e = ShardedExpertExecutor::Create({.num_experts = tiny_->config().num_experts},
                                           {.version = 1, .shards = std::move(shards)});
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? *std::move(e) : nullptr;
  }

  // Random post-attention activations of `tokens` rows and their routing for `layer`.
  model::Routing Route(int64_t tokens, uint64_t seed, std::vector<float>* hidden) {
    const model::ModelConfig& c = tiny_->config();
    *hidden = RandomFloats(tokens * c.hidden_size, seed, -2, 2);
    const std::vector<float> logits = RandomFloats(tokens * c.num_experts, seed + 1, -3, 3);
    return model::RouteTokens(
        logits.data(), tokens, nullptr,
        {.num_experts = c.num_experts,
         .top_k = c.num_experts_per_tok,
         .n_group = c.n_group,
         .topk_group = c.topk_group,
         .norm_topk_prob = c.norm_topk_prob,
         .routed_scaling_factor = static_cast<float>(c.routed_scaling_factor)});
  }

  static expert_testing::TinyModel* tiny_;
  std::unique_ptr<expert::ExpertEngine> engine_;
  std::shared_ptr<expert::InProcessExpertTransport> inproc_;
  scheduler::Membership membership_{{.num_experts = 16}};
  std::unique_ptr<scheduler::ClusterServer> cluster_;
  std::unique_ptr<grpc::Server> scheduler_;
  std::string scheduler_address_;
  int groups_ = 0;
  std::unique_ptr<DeviceWorker> worker_;
  std::vector<std::shared_ptr<NcclExpertTransport>> transports_;
  // Device thread only.
  std::vector<std::unique_ptr<nccl::NcclCommunicator>> comms_;
  std::vector<std::unique_ptr<NcclExpertExchange>> exchanges_;
  std::unique_ptr<gpu::CudaWeights> gpu_weights_;
};

expert_testing::TinyModel* NcclExpertTransportTest::tiny_ = nullptr;

TEST_F(NcclExpertTransportTest, LayerDispatchAndCombineEqualInProcess) {
  const model::ModelConfig& c = tiny_->config();
  auto nccl =
      SelfTransport([&]() -> absl::StatusOr<NcclServeFn> { return MakeHostServeFn(*inproc_); });
  ASSERT_NE(nccl, nullptr);
  const int64_t e = c.num_experts;
  auto reference = Executor({{0, e, {inproc_}}});
  auto one_shard = Executor({{0, e, {nccl}}});
  // Two shards over the same exchange: concurrent calls from the executor's threads are
  // serialised on the device thread, one round each.
  auto two_shards = Executor({{0, e / 2, {nccl}}, {e / 2, e, {nccl}}});
  ASSERT_TRUE(reference && one_shard && two_shards);
  for (int64_t layer = c.first_k_dense_replace; layer < c.num_hidden_layers; ++layer) {
    for (int64_t tokens : {1, 37}) {
      SCOPED_TRACE(testing::Message() << "layer " << layer << " tokens " << tokens);
      std::vector<float> hidden;
      const model::Routing routing = Route(tokens, 100 * layer + tokens, &hidden);
      const size_t n = tokens * c.num_experts_per_tok * c.hidden_size;
      std::vector<float> want(n), got(n), got2(n);
      ASSERT_TRUE(
          reference->RunExperts(layer, hidden.data(), tokens, c.hidden_size, routing, want.data())
              .ok());
      absl::Status s =
          one_shard->RunExperts(layer, hidden.data(), tokens, c.hidden_size, routing, got.data());
      ASSERT_TRUE(s.ok()) << s;
      s = two_shards->RunExperts(layer, hidden.data(), tokens, c.hidden_size, routing, got2.data());
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_EQ(0, std::memcmp(got.data(), want.data(), n * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(got2.data(), want.data(), n * sizeof(float)));
    }
  }
}

TEST_F(NcclExpertTransportTest, GpuExpertsBehindNcclMatchCpuExperts) {
  const model::ModelConfig& c = tiny_->config();
  auto nccl = SelfTransport([&]() -> absl::StatusOr<NcclServeFn> {
    auto w = gpu::CudaWeights::Upload(c, tiny_->full_weights());
    if (!w.ok()) return w.status();
    gpu_weights_ = *std::move(w);
    return MakeCudaServeFn(*gpu_weights_, 512);
  });
  ASSERT_NE(nccl, nullptr);
  auto reference = Executor({{0, c.num_experts, {inproc_}}});
  auto gpu = Executor({{0, c.num_experts, {nccl}}});
  ASSERT_TRUE(reference && gpu);
  const int64_t layer = c.num_hidden_layers - 1, tokens = 29;
  std::vector<float> hidden;
  const model::Routing routing = Route(tokens, 5, &hidden);
  const size_t n = tokens * c.num_experts_per_tok * c.hidden_size;
  std::vector<float> want(n), got(n);
  ASSERT_TRUE(
      reference->RunExperts(layer, hidden.data(), tokens, c.hidden_size, routing, want.data())
          .ok());
  absl::Status s =
      gpu->RunExperts(layer, hidden.data(), tokens, c.hidden_size, routing, got.data());
  ASSERT_TRUE(s.ok()) << s;
  // Same BF16 weights widened to F32, F32 activations: summation order only.
  EXPECT_LE(Nmse(got, want), 1e-10);
}

TEST_F(NcclExpertTransportTest, MalformedCallsAreRejectedBeforeSending) {
  const model::ModelConfig& c = tiny_->config();
  auto nccl =
      SelfTransport([&]() -> absl::StatusOr<NcclServeFn> { return MakeHostServeFn(*inproc_); });
  ASSERT_NE(nccl, nullptr);
  std::vector<float> hidden(2 * c.hidden_size, 0.5f), out(2 * c.hidden_size);
  std::vector<int32_t> ids = {0, static_cast<int32_t>(c.num_experts)};  // second is out of range
  ExpertRows rows{.layer = c.num_hidden_layers - 1,
                  .num_rows = 2,
                  .hidden_size = c.hidden_size,
                  .hidden = hidden.data(),
                  .expert_ids = ids.data()};
  absl::Status s = nccl->RunExperts(rows, absl::Now() + absl::Seconds(10), out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("nccl:rank0"), absl::string_view::npos) << s;
  rows.num_rows = 513;  // above max_rows
  s = nccl->RunExperts(rows, absl::Now() + absl::Seconds(10), out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  // The exchange is still healthy: a valid call goes through.
  ids[1] = 1;
  rows.num_rows = 2;
  s = nccl->RunExperts(rows, absl::Now() + absl::Seconds(10), out.data());
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace
}  // namespace dmoe::transport
