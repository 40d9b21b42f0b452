// The whole cluster inside one test process, every server on 127.0.0.1:0: the scheduler
// (cluster mode), three expert shards and an attention replica registered through the real
// Cluster service and heartbeats. Ids equal the single-process engine's for 16 concurrent
// requests, LLaDA2.1 token editing (edits, forwards and ids) included; for the checkpoint as
// written (F32) and for its q8 copy (dmoe quantize: every pod loads I8 weights).
#include <thread>

#include "attention_service/attention_engine.h"
#include "attention_service/attention_server.h"
#include "attention_service/cluster_experts.h"
#include "clients/cpp/generation_client.h"
#include "engine/engine.h"
#include "expert_service/expert_engine.h"
#include "expert_service/expert_server.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "model/quantize.h"
#include "scheduler/scheduler_server.h"
#include "cluster/membership_agent.h"
#include "tests/testing/concurrency.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe {
namespace {

constexpr int32_t kMask = 4000;
constexpr int32_t kStop = 4001;

class InProcessClusterTest : public ::testing::TestWithParam<bool> {};

TEST_P(InProcessClusterTest, SixteenConcurrentRequestsEqualTheEngine) {
  dmoe_testing::TempDir dir;
  std::string model_dir = dir.Join("model");
  ASSERT_TRUE(dmoe_testing::WriteTinyCheckpoint(model_dir, dmoe_testing::DecodingSpec()).ok());
  if (GetParam()) {
    ASSERT_TRUE(model::QuantizeCheckpoint({.in_dir = model_dir, .out_dir = dir.Join("q8")}).ok());
    model_dir = dir.Join("q8");
    auto q8 = model::Checkpoint::Open(model_dir);
    ASSERT_TRUE(q8.ok()) << q8.status();
    ASSERT_EQ((*q8)->Get("lm_head.weight")->dtype, DType::kI8);
  }

  scheduler::SchedulerServerOptions options{.api = {.model_dir = model_dir}};
  options.api.mask_id = kMask;
  options.api.stop_ids = std::vector<int32_t>{kStop};
  auto scheduler = scheduler::SchedulerServer::Start(options);
  ASSERT_TRUE(scheduler.ok()) << scheduler.status();
  const std::string scheduler_address = (*scheduler)->address();

  // Three expert shards.
  std::vector<std::unique_ptr<expert::ExpertEngine>> engines;
  std::vector<std::unique_ptr<expert::ExpertServer>> servers;
  std::vector<std::unique_ptr<cluster::MembershipAgent>> agents;
  for (auto [first, last] : std::vector<std::pair<int, int>>{{0, 5}, {5, 11}, {11, 16}}) {
    auto engine = expert::ExpertEngine::Create(
        {.model_dir = model_dir, .expert_first = first, .expert_last = last});
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto server = expert::ExpertServer::Create({.listen_address = "127.0.0.1:0"}, **engine);
    ASSERT_TRUE(server.ok()) << server.status();
    v1::RegisterRequest registration;
    registration.set_role(v1::POD_ROLE_EXPERT);
    registration.set_address((*server)->address());
    registration.set_expert_first(first);
    registration.set_expert_last(last);
    registration.set_config_fingerprint((*engine)->info().config_fingerprint);
    agents.push_back(std::make_unique<cluster::MembershipAgent>(
        cluster::MembershipAgentOptions{.scheduler_address = scheduler_address,
                                          .registration = registration}));
    engines.push_back(*std::move(engine));
    servers.push_back(*std::move(server));
  }

  // One attention replica with two micro-batch lanes.
  auto checkpoint = model::Checkpoint::Open(model_dir);
  ASSERT_TRUE(checkpoint.ok());
  auto weights = model::LoadModelWeights(**checkpoint, {.load_dense = true, .load_experts = false});
  ASSERT_TRUE(weights.ok());
  model::Model model((*checkpoint)->config(), *weights);
  attention::ClusterExperts experts(model.config().num_experts);
  auto attention = attention::AttentionEngine::Create(
      {.num_threads = 2, .micro_batches = 2}, model,
      [&](model::Kernels&) { return experts.NewExecutor(); });
  ASSERT_TRUE(attention.ok()) << attention.status();
  // One queued step at most: the scheduler sends one Step at a time, so this holds, and it
  // checks that the burst of Releases of finishing requests never pushes a Step out (they
  // once shared the bound, and a whole batch failed with RESOURCE_EXHAUSTED).
  attention::AttentionServer attention_service({.model_name = "tiny", .max_queued_steps = 1},
                                               **attention);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&attention_service);
  auto attention_server = builder.BuildAndStart();
  ASSERT_GT(port, 0);
  v1::RegisterRequest registration;
  registration.set_role(v1::POD_ROLE_ATTENTION);
  registration.set_address("127.0.0.1:" + std::to_string(port));
  registration.set_config_fingerprint(engines[0]->info().config_fingerprint);
  agents.push_back(std::make_unique<cluster::MembershipAgent>(cluster::MembershipAgentOptions{
      .scheduler_address = scheduler_address,
      .registration = registration,
      .on_placement = [&](const cluster::Placement& p) { experts.Update(p); }}));

  for (int i = 0; i < 100 && experts.version() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GT(experts.version(), 0u) << "the attention replica never got a complete placement";
  ASSERT_EQ((*scheduler)->membership().AttentionAddresses().size(), 1u);

  // Expected ids from the single-process engine.
  auto reference = engine::Engine::Create({.model_dir = model_dir, .num_threads = 1});
  ASSERT_TRUE(reference.ok());
  std::vector<engine::GenerationRequest> requests;
  for (int i = 0; i < 16; ++i) {
    engine::GenerationParams p;
    p.threshold = i % 3 == 0 ? 0.0f : i % 3 == 1 ? 0.5f : 0.95f;
    p.block_length = i % 2 ? 32 : 8;
    p.max_new_tokens = 12 + i;
    p.mask_id = kMask;
    p.stop_ids = {kStop};
    if (i % 4 == 1) {  // LLaDA2.1 token editing: edits happen at edit threshold 0
      p.edit_threshold = i % 8 == 1 ? 0.0f : 0.5f;
      p.max_post_steps = i % 8 == 1 ? 4 : 16;
    }
    std::vector<int32_t> prompt;
    for (int j = 0; j < 3 + 5 * i; ++j) prompt.push_back((j * 37 + i * 101) % 3900);
    requests.push_back({prompt, p});
  }
  auto expected = (*reference)->Generate(requests);
  ASSERT_TRUE(expected.ok());

  auto client = client::GenerationClient::Connect({.target = scheduler_address});
  ASSERT_TRUE(client.ok());
  const std::vector<absl::StatusOr<v1::GenerateResponse>> responses =
      dmoe_testing::RunConcurrently(static_cast<int>(requests.size()), [&](int i) {
        const engine::GenerationRequest& r = requests[i];
        v1::GenerateRequest request;
        for (int32_t id : r.prompt) request.mutable_prompt_ids()->add_ids(id);
        request.mutable_params()->set_threshold(r.params.threshold);
        request.mutable_params()->set_block_length(r.params.block_length);
        request.mutable_params()->set_max_new_tokens(r.params.max_new_tokens);
        if (r.params.edit_threshold) {
          request.mutable_params()->set_edit_threshold(*r.params.edit_threshold);
          request.mutable_params()->set_max_post_steps(r.params.max_post_steps);
        }
        return (*client)->Generate(request, {.timeout = absl::Seconds(60)});
      });
  int64_t edits = 0;
  for (size_t i = 0; i < responses.size(); ++i) {
    const absl::StatusOr<v1::GenerateResponse>& response = responses[i];
    ASSERT_TRUE(response.ok()) << "request " << i << ": " << response.status();
    EXPECT_EQ(std::vector<int32_t>(response->ids().begin(), response->ids().end()),
              (*expected)[i].ids)
        << "request " << i;
    EXPECT_EQ(response->stats().forwards(), (*expected)[i].forwards) << "request " << i;
    EXPECT_EQ(response->stats().edits(), (*expected)[i].edits) << "request " << i;
    edits += response->stats().edits();
  }
  EXPECT_GT(edits, 0);  // not vacuous: the cluster path edited tokens
  for (auto& agent : agents) agent->Stop();
  attention_server->Shutdown(std::chrono::system_clock::now());
  (*scheduler)->Drain(absl::Seconds(1));
  for (auto& s : servers) s->Shutdown(absl::Now());
}

INSTANTIATE_TEST_SUITE_P(Weights, InProcessClusterTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Q8" : "AsWritten";
                         });

}  // namespace
}  // namespace dmoe
