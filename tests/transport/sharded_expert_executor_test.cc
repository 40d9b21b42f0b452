// ShardedExpertExecutor over in-process transports: logits and generated ids are bit-identical
// to LocalExpertExecutor for 1 shard, 3 shards and 2 replicas per shard; shards with no rows
// are not called; a failing replica falls back to another; no live replica is UNAVAILABLE.
#include "transport/sharded_expert_executor.h"

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "model/cpu/make_kernels.h"
#include "expert_service/expert_engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/transport/expert_test_util.h"
#include "expert_service/in_process_expert_transport.h"

namespace dmoe::transport {
namespace {

using ::dmoe::expert_testing::BitIdentical;
using ::dmoe::expert_testing::Params;
using ::dmoe::expert_testing::Prompt;
using ::testing::HasSubstr;

// Wraps a transport: counts calls and rows, and fails every call with `fail_with` when set.
class CountingTransport final : public ExpertTransport {
 public:
  explicit CountingTransport(ExpertTransportSharedPtr inner) : inner_(std::move(inner)) {}
  const std::string& address() const override { return inner_->address(); }
  absl::Status RunExperts(const ExpertRows& rows, absl::Time deadline, float* out) override {
    ++calls;
    this->rows += rows.num_rows;
    if (!fail_with.ok()) return fail_with;
    return inner_->RunExperts(rows, deadline, out);
  }
  absl::StatusOr<transport::ShardInfo> GetShardInfo(absl::Time deadline) override {
    return inner_->GetShardInfo(deadline);
  }

  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> rows{0};
  absl::Status fail_with;  // set before the calls it affects

 private:
  ExpertTransportSharedPtr inner_;
};

class ShardedExpertExecutorTest : public ::testing::Test {
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
    auto kernels = model::MakeKernels("cpu", 2);
    ASSERT_TRUE(kernels.ok());
    kernels_ = *std::move(kernels);
  }

  // A fresh in-process shard [first, last) behind a counting wrapper.
  std::shared_ptr<CountingTransport> Replica(int64_t first, int64_t last) {
    auto engine = expert::ExpertEngine::Create(
        {.model_dir = tiny_->dir(), .expert_first = first, .expert_last = last});
    EXPECT_TRUE(engine.ok()) << engine.status();
    engines_.push_back(*std::move(engine));
    auto inproc = std::make_shared<expert::InProcessExpertTransport>(
        *engines_.back(), absl::StrCat("shard-", first, "-", last, "-", engines_.size()));
    return std::make_shared<CountingTransport>(inproc);
  }

  std::unique_ptr<ShardedExpertExecutor> Executor(ExpertPlacement placement,
                                                  absl::Duration backoff = absl::Seconds(1)) {
    auto executor = ShardedExpertExecutor::Create(
        {.num_experts = tiny_->config().num_experts, .replica_backoff = backoff},
        std::move(placement));
    EXPECT_TRUE(executor.ok()) << executor.status();
    return executor.ok() ? *std::move(executor) : nullptr;
  }

  // Logits of a 3-sequence batch and ids of a 3-request generation, local vs `executor`.
  void ExpectSameAsLocal(model::ExpertExecutor& executor) {
    model::LocalExpertExecutor local(tiny_->full_weights(), *kernels_);
    const std::vector<std::vector<int32_t>> sequences = {Prompt(5, 1), Prompt(33, 2),
                                                         Prompt(40, 3)};
    auto want = expert_testing::ForwardLogits(tiny_->full(), *kernels_, local, sequences);
    auto got = expert_testing::ForwardLogits(tiny_->attention(), *kernels_, executor, sequences);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(want->size(), got->size());
    for (size_t i = 0; i < want->size(); ++i) {
      EXPECT_TRUE(BitIdentical((*want)[i], (*got)[i])) << "sequence " << i;
    }

    const std::vector<std::vector<int32_t>> prompts = {Prompt(7, 4), Prompt(31, 5),
                                                       Prompt(12, 6)};
    const engine::GenerationParams params = Params(0.5f, 8, 24);
    auto want_ids = expert_testing::Generate(tiny_->full(), *kernels_, local, prompts, params);
    auto got_ids =
        expert_testing::Generate(tiny_->attention(), *kernels_, executor, prompts, params);
    ASSERT_TRUE(want_ids.ok()) << want_ids.status();
    ASSERT_TRUE(got_ids.ok()) << got_ids.status();
    EXPECT_EQ(*want_ids, *got_ids);
    EXPECT_FALSE((*want_ids)[0].empty());
  }

  static expert_testing::TinyModel* tiny_;
  model::KernelsPtr kernels_;
  std::vector<std::unique_ptr<expert::ExpertEngine>> engines_;
};

expert_testing::TinyModel* ShardedExpertExecutorTest::tiny_ = nullptr;

TEST_F(ShardedExpertExecutorTest, OneShardIsBitIdenticalToLocal) {
  auto replica = Replica(0, 16);
  auto executor = Executor({.shards = {{0, 16, {replica}}}});
  ASSERT_NE(executor, nullptr);
  ExpectSameAsLocal(*executor);
  EXPECT_GT(replica->calls, 0);
  EXPECT_EQ(executor->stats().failed_calls, 0);
  EXPECT_EQ(executor->stats().calls, replica->calls);
}

TEST_F(ShardedExpertExecutorTest, ThreeShardsTwoReplicasAreBitIdenticalAndSpreadLoad) {
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 5}, {5, 11}, {11, 16}};
  ExpertPlacement placement{.version = 3};
  std::vector<std::shared_ptr<CountingTransport>> replicas;
  for (auto [first, last] : ranges) {
    auto a = Replica(first, last);
    auto b = Replica(first, last);
    replicas.push_back(a);
    replicas.push_back(b);
    placement.shards.push_back({first, last, {a, b}});
  }
  auto executor = Executor(std::move(placement));
  ASSERT_NE(executor, nullptr);
  ExpectSameAsLocal(*executor);
  for (size_t s = 0; s < ranges.size(); ++s) {
    const int64_t a = replicas[2 * s]->calls, b = replicas[2 * s + 1]->calls;
    EXPECT_GT(a, 0) << "shard " << s;
    EXPECT_LE(std::abs(a - b), 1) << "shard " << s << ": round robin";
  }
  EXPECT_EQ(executor->stats().failed_calls, 0);
}

TEST_F(ShardedExpertExecutorTest, ShardsWithZeroTokensAreNotCalled) {
  auto s0 = Replica(0, 5), s1 = Replica(5, 11), s2 = Replica(11, 16);
  auto executor = Executor({.shards = {{0, 5, {s0}}, {5, 11, {s1}}, {11, 16, {s2}}}});
  ASSERT_NE(executor, nullptr);
  // Three tokens routed only to experts 0-4 (expert 2 gets nothing, expert 4 twice).
  const int64_t h = tiny_->config().hidden_size;
  model::Routing routing{.num_tokens = 3, .top_k = 4,
                         .experts = {0, 1, 3, 4, 4, 0, 1, 3, 3, 1, 0, 4},
                         .weights = std::vector<float>(12, 0.25f)};
  std::vector<float> hidden(3 * h);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = static_cast<float>((i * 7919) % 97) / 50.0f - 1.0f;
  std::vector<float> want(12 * h), got(12 * h, -1.0f);
  model::LocalExpertExecutor local(tiny_->full_weights(), *kernels_);
  ASSERT_TRUE(local.RunExperts(1, hidden.data(), 3, h, routing, want.data()).ok());
  absl::Status status = executor->RunExperts(1, hidden.data(), 3, h, routing, got.data());
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(BitIdentical(want, got));
  EXPECT_EQ(s0->calls, 1);
  EXPECT_EQ(s0->rows, 12);
  EXPECT_EQ(s1->calls, 0);
  EXPECT_EQ(s2->calls, 0);

  // No tokens at all: nothing is sent.
  model::Routing empty{.num_tokens = 0, .top_k = 4, .experts = {}, .weights = {}};
  EXPECT_TRUE(executor->RunExperts(2, nullptr, 0, h, empty, nullptr).ok());
  EXPECT_EQ(s0->calls, 1);
}

// Expert balancing: an expert map where every expert is held by both shards. Load-aware
// dispatch splits rows over the holders; outputs stay bit-identical whichever shard computes
// a row.
TEST_F(ShardedExpertExecutorTest, ExpertMapSplitsRowsOverHoldersBitIdentically) {
  const model::ModelConfig& c = tiny_->config();
  const int64_t moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  auto a = Replica(0, 8);
  expert::ExpertEngine& engine_a = *engines_.back();
  auto b = Replica(8, 16);
  expert::ExpertEngine& engine_b = *engines_.back();
  std::vector<int32_t> high(8), low(8);
  for (int32_t e = 0; e < 8; ++e) {
    low[e] = e;
    high[e] = 8 + e;
  }
  ASSERT_TRUE(engine_a.SetResidentExperts(std::vector<std::vector<int32_t>>(moe_layers, high))
                  .ok());
  ASSERT_TRUE(engine_b.SetResidentExperts(std::vector<std::vector<int32_t>>(moe_layers, low))
                  .ok());
  EXPECT_EQ(engine_a.resident_extra_experts(), 8 * moe_layers);
  ExpertPlacement placement{.version = 7, .shards = {{0, 8, {a}}, {8, 16, {b}}}};
  placement.first_moe_layer = c.first_k_dense_replace;
  placement.holders.assign(moe_layers, std::vector<std::vector<int32_t>>(16, {0, 1}));
  auto executor = Executor(std::move(placement));
  ASSERT_NE(executor, nullptr);
  ExpectSameAsLocal(*executor);
  // Least loaded first, ties to shard 0: every other row of a layer goes to each shard.
  EXPECT_GT(a->rows, 0);
  EXPECT_GT(b->rows, 0);
  EXPECT_LE(std::abs(a->rows.load() - b->rows.load()), a->calls.load() + b->calls.load());
  EXPECT_EQ(executor->stats().failed_calls, 0);
}

// Rows given to a holder that has not loaded the expert (or whose replicas are all down) are
// computed by the expert's home shard: a placement change or a lost shard costs time only.
TEST_F(ShardedExpertExecutorTest, RowsAHolderCannotComputeGoHome) {
  const model::ModelConfig& c = tiny_->config();
  const int64_t moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  auto home = Replica(0, 8);
  auto other = Replica(8, 16);  // never loads experts 0-7
  ExpertPlacement placement{.shards = {{0, 8, {home}}, {8, 16, {other}}}};
  placement.first_moe_layer = c.first_k_dense_replace;
  placement.holders.assign(moe_layers, std::vector<std::vector<int32_t>>(16, {1}));
  for (auto& layer : placement.holders) {
    for (int e = 0; e < 8; ++e) layer[e] = {1};  // experts 0-7 sent to shard 1 only
  }
  auto executor = Executor(std::move(placement));
  ASSERT_NE(executor, nullptr);
  ExpectSameAsLocal(*executor);
  EXPECT_GT(home->rows, 0);
  EXPECT_GT(executor->stats().failed_calls, 0);

  // The same with the holder unreachable.
  auto home2 = Replica(0, 8);
  auto dead = Replica(8, 16);
  dead->fail_with = absl::UnavailableError("connection refused");
  ExpertPlacement lost{.shards = {{0, 8, {home2}}, {8, 16, {dead}}}};
  lost.first_moe_layer = c.first_k_dense_replace;
  lost.holders.assign(moe_layers, std::vector<std::vector<int32_t>>(16, {1}));
  for (auto& layer : lost.holders) {
    for (int e = 0; e < 8; ++e) layer[e] = {0, 1};
  }
  auto executor2 = Executor(std::move(lost));
  ASSERT_NE(executor2, nullptr);
  // Experts 8-15 have no other home than the dead shard: those layers fail as before.
  auto logits =
      expert_testing::ForwardLogits(tiny_->attention(), *kernels_, *executor2, {Prompt(40, 1)});
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ShardedExpertExecutorTest, ExpertMapIsValidated) {
  auto r = Replica(0, 16);
  ExpertPlacement placement{.shards = {{0, 16, {r}}}};
  placement.holders.assign(1, std::vector<std::vector<int32_t>>(16, {0}));
  placement.holders[0][3] = {1};
  auto bad = ShardedExpertExecutor::Create({.num_experts = 16}, placement);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("holders[0][3]"));
  placement.holders[0][3] = {};
  EXPECT_THAT(std::string(ShardedExpertExecutor::Create({.num_experts = 16}, placement)
                              .status()
                              .message()),
              HasSubstr("holders[0][3]"));
}

TEST_F(ShardedExpertExecutorTest, FailingReplicaFallsBackToTheOther) {
  auto broken = Replica(5, 11);
  broken->fail_with = absl::UnavailableError("connection refused");
  auto healthy = Replica(5, 11);
  // Backoff 0: the broken replica stays first in turn every other call, so it is hit often.
  auto executor = Executor(
      {.shards = {{0, 5, {Replica(0, 5)}}, {5, 11, {broken, healthy}}, {11, 16, {Replica(11, 16)}}}},
      absl::ZeroDuration());
  ASSERT_NE(executor, nullptr);
  ExpectSameAsLocal(*executor);
  EXPECT_GT(broken->calls, 1);
  EXPECT_EQ(executor->stats().failed_calls, broken->calls);
  EXPECT_GT(healthy->calls, 0);
}

TEST_F(ShardedExpertExecutorTest, BackoffSkipsAFailedReplicaUntilItExpires) {
  auto broken = Replica(0, 16);
  broken->fail_with = absl::DeadlineExceededError("too slow");
  auto healthy = Replica(0, 16);
  auto executor = Executor({.shards = {{0, 16, {broken, healthy}}}}, absl::Hours(1));
  ASSERT_NE(executor, nullptr);
  ExpectSameAsLocal(*executor);
  EXPECT_EQ(broken->calls, 1);  // tried once, then only as a last resort
  EXPECT_EQ(executor->stats().failed_calls, 1);
}

TEST_F(ShardedExpertExecutorTest, NoLiveReplicaIsUnavailableNamingLayerAndRange) {
  auto a = Replica(5, 11), b = Replica(5, 11);
  a->fail_with = absl::UnavailableError("connection refused");
  b->fail_with = absl::UnavailableError("socket closed");
  auto executor = Executor({.shards = {{0, 5, {Replica(0, 5)}}, {5, 11, {a, b}}, {11, 16, {Replica(11, 16)}}}});
  ASSERT_NE(executor, nullptr);
  auto logits =
      expert_testing::ForwardLogits(tiny_->attention(), *kernels_, *executor, {Prompt(40, 1)});
  ASSERT_FALSE(logits.ok());
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kUnavailable) << logits.status();
  EXPECT_THAT(std::string(logits.status().message()),
              HasSubstr("layer 1: no live replica for experts [5, 11)"));
  EXPECT_THAT(std::string(logits.status().message()), HasSubstr("socket closed"));
  EXPECT_EQ(a->calls, 1);
  EXPECT_EQ(b->calls, 1);
}

TEST_F(ShardedExpertExecutorTest, InvalidArgumentIsNotRetried) {
  auto a = Replica(0, 16), b = Replica(0, 16);
  a->fail_with = absl::InvalidArgumentError("hidden.shape: expected [n, 64]");
  auto executor = Executor({.shards = {{0, 16, {a, b}}}});
  ASSERT_NE(executor, nullptr);
  auto logits =
      expert_testing::ForwardLogits(tiny_->attention(), *kernels_, *executor, {Prompt(9, 1)});
  ASSERT_FALSE(logits.ok());
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kInvalidArgument) << logits.status();
  EXPECT_THAT(std::string(logits.status().message()),
              HasSubstr("layer 1 experts [0, 16): hidden.shape"));
  EXPECT_EQ(b->calls, 0);
}

TEST_F(ShardedExpertExecutorTest, RoutingOutsideTheModelIsInvalidArgument) {
  auto executor = Executor({.shards = {{0, 16, {Replica(0, 16)}}}});
  ASSERT_NE(executor, nullptr);
  const int64_t h = tiny_->config().hidden_size;
  std::vector<float> hidden(h, 0.5f), out(4 * h);
  model::Routing routing{.num_tokens = 1, .top_k = 4, .experts = {0, 1, 16, 2},
                         .weights = std::vector<float>(4, 0.25f)};
  absl::Status status = executor->RunExperts(1, hidden.data(), 1, h, routing, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("expert 16"));
}

TEST_F(ShardedExpertExecutorTest, PlacementMustCoverEveryExpertOnce) {
  auto r = Replica(0, 16);
  struct Case {
    ExpertPlacement placement;
    std::string message;
  };
  std::vector<Case> cases = {
      {{}, "no shard"},
      {{.shards = {{0, 8, {r}}, {9, 16, {r}}}}, "shards[1]: experts [9, 16)"},
      {{.shards = {{0, 8, {r}}, {6, 16, {r}}}}, "shards[1]"},
      {{.shards = {{0, 8, {r}}}}, "cover [0, 8), expected [0, 16)"},
      {{.shards = {{0, 16, {}}}}, "shards[0]: has no replica"},
      {{.shards = {{0, 16, {r, nullptr}}}}, "shards[0].replicas[1]"},
      {{.shards = {{0, 0, {r}}, {0, 16, {r}}}}, "shards[0]"},
  };
  for (Case& c : cases) {
    auto executor = ShardedExpertExecutor::Create({.num_experts = 16}, std::move(c.placement));
    ASSERT_FALSE(executor.ok()) << c.message;
    EXPECT_EQ(executor.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(executor.status().message()), HasSubstr(c.message));
  }
}

TEST_F(ShardedExpertExecutorTest, CheckShardsComparesShardInfoWithTheModel) {
  auto executor = Executor({.shards = {{0, 5, {Replica(0, 5)}}, {5, 16, {Replica(5, 16)}}}});
  ASSERT_NE(executor, nullptr);
  EXPECT_TRUE(executor->CheckShards(tiny_->config(), absl::InfiniteFuture()).ok());
  // A replica serving [0, 8) cannot stand in for [0, 16).
  auto narrow = Executor({.shards = {{0, 16, {Replica(0, 8)}}}});
  ASSERT_NE(narrow, nullptr);
  absl::Status status = narrow->CheckShards(tiny_->config(), absl::InfiniteFuture());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("expert range"));
  model::ModelConfig other = tiny_->config();
  other.hidden_size = 128;
  status = executor->CheckShards(other, absl::InfiniteFuture());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("hidden_size: shard has 64, expected 128"));
}

}  // namespace
}  // namespace dmoe::transport
