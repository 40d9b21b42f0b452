// An attention replica driven by Sequences step by step produces the single-process engine's
// ids, with one or two micro-batches, and recovers from a lost cache by re-prefilling.
#include "attention_service/attention_engine.h"

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::attention {
namespace {

class AttentionEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(checkpoint_.ok()) << checkpoint_.status();
    auto engine = engine::Engine::Create({.model_dir = checkpoint_.dir(), .num_threads = 2});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  std::unique_ptr<AttentionEngine> MakeReplica(int micro_batches) {
    auto replica = AttentionEngine::Create(
        {.num_threads = 2, .micro_batches = micro_batches}, engine_->model(),
        [this](model::Kernels& k) {
          return std::make_unique<model::LocalExpertExecutor>(engine_->model().weights(), k);
        });
    EXPECT_TRUE(replica.ok()) << replica.status();
    return *std::move(replica);
  }

  engine::GenerationParams Params(float threshold) {
    engine::GenerationParams p;
    p.threshold = threshold;
    p.max_new_tokens = 40;
    p.mask_id = 4000;
    p.stop_ids = {4001};
    return p;
  }

  // Drives `prompts` through the replica, all sequences in every step.
  std::vector<std::vector<int32_t>> Drive(AttentionEngine& replica,
                                          const std::vector<std::vector<int32_t>>& prompts,
                                          float threshold, int lose_cache_at_step = -1) {
    std::vector<engine::Sequence> seqs;
    for (const auto& p : prompts) seqs.push_back(*engine::Sequence::Create(p, Params(threshold)));
    for (int step = 0;; ++step) {
      std::vector<SegmentRequest> segments;
      std::vector<size_t> live;
      for (size_t i = 0; i < seqs.size(); ++i) {
        if (seqs[i].done()) continue;
        live.push_back(i);
        segments.push_back({"seq-" + std::to_string(i), seqs[i].NextStep(), false});
      }
      if (live.empty()) break;
      if (step == lose_cache_at_step) replica.Release({"seq-0"});
      auto proposals = replica.Step(segments);
      if (!proposals.ok()) {
        EXPECT_EQ(proposals.status().code(), absl::StatusCode::kFailedPrecondition);
        for (size_t i : live) seqs[i].ResetCache();
        for (size_t j = 0; j < live.size(); ++j) {
          segments[j].plan = seqs[live[j]].NextStep();
          segments[j].reset_cache = true;
        }
        proposals = replica.Step(segments);
      }
      EXPECT_TRUE(proposals.ok()) << proposals.status();
      for (size_t j = 0; j < live.size(); ++j) {
        EXPECT_TRUE(seqs[live[j]].Apply(segments[j].plan, (*proposals)[j]).ok());
      }
    }
    std::vector<std::vector<int32_t>> out;
    for (auto& s : seqs) out.push_back(s.FinalTokens());
    return out;
  }

  std::vector<int32_t> Solo(const std::vector<int32_t>& prompt, float threshold) {
    auto r = engine_->Generate({{prompt, Params(threshold)}});
    EXPECT_TRUE(r.ok());
    return (*r)[0].ids;
  }

  dmoe_testing::TinyCheckpointDir checkpoint_{dmoe_testing::DecodingSpec()};
  std::unique_ptr<engine::Engine> engine_;
};

std::vector<std::vector<int32_t>> Prompts() {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 5; ++i) {
    std::vector<int32_t> p;
    for (int j = 0; j < 7 + 9 * i; ++j) p.push_back((j * 31 + i * 17) % 3900);
    prompts.push_back(p);
  }
  return prompts;
}

TEST_F(AttentionEngineTest, StepsReproduceTheEngineWithOneAndTwoMicroBatches) {
  for (int micro : {1, 2}) {
    auto replica = MakeReplica(micro);
    auto got = Drive(*replica, Prompts(), 0.5f);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i], Solo(Prompts()[i], 0.5f)) << "micro " << micro << " seq " << i;
    }
    EXPECT_EQ(replica->Info().sequences, 5);
    std::vector<std::string> ids;
    for (int i = 0; i < 5; ++i) ids.push_back("seq-" + std::to_string(i));
    EXPECT_EQ(replica->Release(ids), 5);
    EXPECT_EQ(replica->Info().kv_pages_used, 0);
  }
}

TEST_F(AttentionEngineTest, LostCacheIsRefusedThenRebuiltWithIdenticalOutput) {
  auto replica = MakeReplica(1);
  auto got = Drive(*replica, Prompts(), 0.95f, /*lose_cache_at_step=*/3);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], Solo(Prompts()[i], 0.95f)) << i;
}

TEST_F(AttentionEngineTest, RejectsDuplicateSequencesAndBadSampling) {
  auto replica = MakeReplica(1);
  auto seq = engine::Sequence::Create({1, 2, 3}, Params(0.9f));
  SegmentRequest s{"a", seq->NextStep(), false};
  auto dup = replica->Step({s, s});
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  s.plan.sampling.top_p = 2;
  EXPECT_EQ(replica->Step({s}).status().code(), absl::StatusCode::kInvalidArgument);
  s.plan.sampling.top_p = 1;
  s.plan.tokens[0] = 999999;
  auto bad_token = replica->Step({s});
  EXPECT_EQ(bad_token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_token.status().message().find("token id"), std::string::npos);
}

}  // namespace
}  // namespace dmoe::attention
