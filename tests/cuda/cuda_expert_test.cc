// The expert shard on the GPU (`dmoe-expert --device cuda`, ExpertEngineOptions::device
// "cuda"): the grouped expert kernels behind ExpertEngine give the CPU shard's outputs (NMSE,
// summation order only) for a partial shard, calls larger than one device launch (chunks) and
// wire bytes at odd alignment; bad ids are refused before the device is touched; and two GPU
// shards served over real gRPC (ExpertServer on 127.0.0.1:0) drive a forward and a generation
// like the CPU experts. Skips without a GPU.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "engine/engine.h"
#include "model/cpu/make_kernels.h"
#include "expert_service/expert_engine.h"
#include "expert_service/expert_server.h"
#include "gtest/gtest.h"
#include "model/expert_executor.h"
#include "tests/cuda/gpu_test_util.h"
#include "tests/transport/expert_test_util.h"
#include "transport/grpc_expert_transport.h"
#include "transport/sharded_expert_executor.h"

namespace dmoe::expert {
namespace {

using ::dmoe::gpu_testing::Nmse;
using ::dmoe::gpu_testing::RandomFloats;

// `bytes` placed one byte past an aligned address, as protobuf may hand them over.
class Misaligned {
 public:
  explicit Misaligned(const void* data, size_t bytes) : storage_(bytes + 8) {
    std::memcpy(storage_.data() + 1, data, bytes);
  }
  const void* data() const { return storage_.data() + 1; }

 private:
  std::vector<char> storage_;
};

class CudaExpertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DMOE_GPU_TEST_OR_SKIP();
    auto tiny = expert_testing::TinyModel::Create(/*seed=*/21);
    ASSERT_TRUE(tiny.ok()) << tiny.status();
    tiny_ = *std::move(tiny);
  }

  std::unique_ptr<ExpertEngine> Engine(const std::string& device, int64_t first, int64_t last,
                                       int64_t device_max_rows = 4096) {
    auto engine = ExpertEngine::Create({.model_dir = tiny_->dir(),
                                        .expert_first = first,
                                        .expert_last = last,
                                        .device = device,
                                        .device_max_rows = device_max_rows,
                                        .num_workers = 2});
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *std::move(engine) : nullptr;
  }

  std::unique_ptr<expert_testing::TinyModel> tiny_;
};

TEST_F(CudaExpertTest, GpuShardMatchesCpuShardInChunksAtOddAlignment) {
  const model::ModelConfig& c = tiny_->config();
  const int64_t first = 3, last = 13, h = c.hidden_size;
  auto cpu = Engine("cpu", first, last);
  auto gpu = Engine("cuda", first, last, /*device_max_rows=*/16);  // 53 rows = 4 launches
  ASSERT_TRUE(cpu && gpu);
  for (int64_t layer = c.first_k_dense_replace; layer < c.num_hidden_layers; ++layer) {
    SCOPED_TRACE(testing::Message() << "layer " << layer);
    const int64_t n = 53;
    std::vector<float> hidden = RandomFloats(n * h, 100 + layer);
    std::vector<int32_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(first + (i * 7) % (last - first));
    Misaligned wire_hidden(hidden.data(), hidden.size() * 4), wire_ids(ids.data(), n * 4);
    ExpertRequest request{.layer = layer,
                          .hidden = {WireDType::kF32, {n, h}, wire_hidden.data(),
                                     hidden.size() * 4},
                          .expert_ids = {WireDType::kI32, {n}, wire_ids.data(), ids.size() * 4}};
    std::vector<float> want(n * h), got(n * h, -7.0f);
    absl::Status s = cpu->Run(request, absl::Now() + absl::Seconds(30), want.data());
    ASSERT_TRUE(s.ok()) << s;
    double seconds = -1;
    s = gpu->Run(request, absl::Now() + absl::Seconds(30), got.data(), &seconds);
    ASSERT_TRUE(s.ok()) << s;
    // Same weights widened to F32, F32 activations: summation order only.
    EXPECT_LE(Nmse(got, want), 1e-10);
    EXPECT_GT(seconds, 0);
  }
  EXPECT_EQ(gpu->rows_computed(), cpu->rows_computed());
  EXPECT_GT(gpu->busy_seconds(), 0);
}

TEST_F(CudaExpertTest, BadIdsAndEmptyCallsNeverReachTheDevice) {
  const model::ModelConfig& c = tiny_->config();
  const int64_t h = c.hidden_size, layer = c.num_hidden_layers - 1;
  auto gpu = Engine("cuda", 0, 8);
  ASSERT_TRUE(gpu);
  std::vector<float> hidden(2 * h, 0.25f), out(2 * h);
  std::vector<int32_t> ids = {1, 8};  // 8 is the next shard's
  ExpertRequest request{.layer = layer,
                        .hidden = {WireDType::kF32, {2, h}, hidden.data(), hidden.size() * 4},
                        .expert_ids = {WireDType::kI32, {2}, ids.data(), ids.size() * 4}};
  absl::Status s = gpu->Run(request, absl::Now() + absl::Seconds(10), out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("expert_ids[1]"), std::string::npos) << s;
  ExpertRequest empty{.layer = layer,
                      .hidden = {WireDType::kF32, {0, h}, nullptr, 0},
                      .expert_ids = {WireDType::kI32, {0}, nullptr, 0}};
  EXPECT_TRUE(gpu->Run(empty, absl::Now() + absl::Seconds(10), nullptr).ok());
  // The device is still healthy.
  ids[1] = 7;
  s = gpu->Run(request, absl::Now() + absl::Seconds(10), out.data());
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(gpu->rows_computed(), 2);
}

TEST_F(CudaExpertTest, TwoGpuShardsOverGrpcServeLikeTheCpuExperts) {
  const model::ModelConfig& c = tiny_->config();
  struct Shard {
    std::unique_ptr<ExpertEngine> engine;
    std::unique_ptr<ExpertServer> server;
  };
  std::vector<Shard> shards(2);
  transport::ExpertPlacement placement{.version = 1};
  for (int i = 0; i < 2; ++i) {
    const int64_t first = i * c.num_experts / 2, last = (i + 1) * c.num_experts / 2;
    shards[i].engine = Engine("cuda", first, last);
    ASSERT_TRUE(shards[i].engine);
    auto server = ExpertServer::Create({.listen_address = "127.0.0.1:0"}, *shards[i].engine);
    ASSERT_TRUE(server.ok()) << server.status();
    shards[i].server = *std::move(server);
    auto transport = transport::GrpcExpertTransport::Create({.target = shards[i].server->address()});
    ASSERT_TRUE(transport.ok()) << transport.status();
    placement.shards.push_back({first, last, {*std::move(transport)}});
  }
  auto executor =
      transport::ShardedExpertExecutor::Create({.num_experts = c.num_experts}, std::move(placement));
  ASSERT_TRUE(executor.ok()) << executor.status();
  ASSERT_TRUE((*executor)->CheckShards(c, absl::Now() + absl::Seconds(10)).ok());

  auto kernels = model::MakeKernels("cpu", 2);
  ASSERT_TRUE(kernels.ok());
  model::LocalExpertExecutor local(tiny_->full_weights(), **kernels);
  const std::vector<std::vector<int32_t>> sequences = {expert_testing::Prompt(6, 1),
                                                       expert_testing::Prompt(40, 2)};
  auto want = expert_testing::ForwardLogits(tiny_->full(), **kernels, local, sequences);
  auto got = expert_testing::ForwardLogits(tiny_->attention(), **kernels, **executor, sequences);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t i = 0; i < want->size(); ++i) {
    EXPECT_LE(Nmse((*got)[i], (*want)[i]), 1e-9) << "sequence " << i;
  }
  // A generation through the GPU shards. Ids can only differ where two candidates tie within
  // the summation-order noise; the test model's logits are far from such ties at these seeds.
  const std::vector<std::vector<int32_t>> prompts = {expert_testing::Prompt(9, 3),
                                                     expert_testing::Prompt(33, 4)};
  const engine::GenerationParams params = expert_testing::Params(0.5f, 8, 20);
  auto want_ids = expert_testing::Generate(tiny_->full(), **kernels, local, prompts, params);
  auto got_ids =
      expert_testing::Generate(tiny_->attention(), **kernels, **executor, prompts, params);
  ASSERT_TRUE(want_ids.ok()) << want_ids.status();
  ASSERT_TRUE(got_ids.ok()) << got_ids.status();
  EXPECT_EQ(*want_ids, *got_ids);
  EXPECT_EQ((*executor)->stats().failed_calls, 0);
  EXPECT_GT(shards[0].engine->rows_computed() + shards[1].engine->rows_computed(), 0);
}

}  // namespace
}  // namespace dmoe::expert
