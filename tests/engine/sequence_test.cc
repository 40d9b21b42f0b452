// The denoising policy against hand-made proposals: plans (what each forward carries), the
// threshold rule, the reference step schedule, stops and truncation.
#include "engine/sequence.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

constexpr int32_t kMask = 99;
constexpr int32_t kStop = 98;

GenerationParams Params(int64_t block, int64_t max_new, float threshold) {
  GenerationParams p;
  p.block_length = block;
  p.max_new_tokens = max_new;
  p.threshold = threshold;
  p.mask_id = kMask;
  p.stop_ids = {kStop};
  return p;
}

// Proposal for `n` rows: token 10 + row, confidence from `conf`.
Proposal Make(const std::vector<float>& conf, int32_t base = 10) {
  Proposal p;
  for (size_t i = 0; i < conf.size(); ++i) {
    p.tokens.push_back(base + static_cast<int32_t>(i));
    p.confidence.push_back(conf[i]);
  }
  return p;
}

TEST(SequenceTest, FirstPlanPrefillsFullPromptBlocksAndCarriesThePartialBlock) {
  auto s = Sequence::Create({1, 2, 3, 4, 5, 6}, Params(4, 8, 0.9f));
  ASSERT_TRUE(s.ok());
  StepPlan plan = s->NextStep();
  EXPECT_EQ(plan.start, 0);
  EXPECT_THAT(plan.tokens, ElementsAre(1, 2, 3, 4, 5, 6, kMask, kMask));
  EXPECT_EQ(plan.persist, 4);        // the full prompt block joins the cache
  EXPECT_EQ(plan.logits_from, 4);    // proposals for the block [4, 8)
  EXPECT_EQ(plan.attention_block, 4);
}

TEST(SequenceTest, CommitsAllAboveThresholdElseTheSingleMostConfident) {
  auto s = Sequence::Create({1, 2, 3, 4}, Params(4, 8, 0.9f));
  ASSERT_TRUE(s.ok());
  StepPlan plan = s->NextStep();
  ASSERT_TRUE(s->Apply(plan, Make({0.95f, 0.2f, 0.91f, 0.5f})).ok());
  EXPECT_THAT(s->block(), ElementsAre(10, kMask, 12, kMask));
  plan = s->NextStep();
  EXPECT_EQ(plan.start, 4);  // the prompt block is cached now
  EXPECT_THAT(plan.tokens, ElementsAre(10, kMask, 12, kMask));
  ASSERT_TRUE(s->Apply(plan, Make({0.99f, 0.3f, 0.99f, 0.6f})).ok());  // nothing masked > 0.9
  EXPECT_THAT(s->block(), ElementsAre(10, kMask, 12, 13));  // the most confident masked one
}

TEST(SequenceTest, FinishedBlockIsPersistedByTheNextBlocksFirstForward) {
  auto s = Sequence::Create({1, 2, 3, 4}, Params(4, 8, 0.0f));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->Apply(s->NextStep(), Make({0.5f, 0.5f, 0.5f, 0.5f})).ok());  // all > 0
  EXPECT_THAT(s->FinalTokens(), ElementsAre(10, 11, 12, 13));
  StepPlan plan = s->NextStep();
  EXPECT_EQ(plan.start, 4);
  EXPECT_THAT(plan.tokens, ElementsAre(10, 11, 12, 13, kMask, kMask, kMask, kMask));
  EXPECT_EQ(plan.persist, 4);
  EXPECT_EQ(plan.logits_from, 4);
  ASSERT_TRUE(s->Apply(plan, Make({0.5f, 0.5f, 0.5f, 0.5f}, 20)).ok());
  EXPECT_TRUE(s->done());
  EXPECT_EQ(s->finish_reason(), FinishReason::kLength);
  EXPECT_THAT(s->FinalTokens(), ElementsAre(10, 11, 12, 13, 20, 21, 22, 23));
  EXPECT_EQ(s->forwards(), 2);
}

TEST(SequenceTest, StopsAfterTheBlockHoldingAStopTokenAndTruncatesAfterIt) {
  auto s = Sequence::Create({1, 2}, Params(4, 20, 0.0f));
  ASSERT_TRUE(s.ok());
  Proposal p = Make({0.5f, 0.5f, 0.5f, 0.5f});
  p.tokens = {0, 0, 7, kStop};  // rows 0-1 are prompt positions (not masked, ignored)
  p.tokens[2] = 7;
  ASSERT_TRUE(s->Apply(s->NextStep(), p).ok());
  EXPECT_TRUE(s->done());
  EXPECT_EQ(s->finish_reason(), FinishReason::kStop);
  EXPECT_THAT(s->FinalTokens(), ElementsAre(7, kStop));
}

TEST(SequenceTest, OutputIsCappedAtMaxNewTokensThoughTheLastBlockIsDecodedWhole) {
  auto s = Sequence::Create({1, 2, 3, 4}, Params(4, 3, 0.0f));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->Apply(s->NextStep(), Make({.5f, .5f, .5f, .5f})).ok());
  EXPECT_TRUE(s->done());
  EXPECT_THAT(s->FinalTokens(), ElementsAre(10, 11, 12));
}

TEST(SequenceTest, ShortGenerationsFollowTheReferenceStepSchedule) {
  // max_new_tokens 2 -> steps = min(32, 2) = 2 -> quota B / 2 = 2 tokens per step for B = 4.
  auto s = Sequence::Create({1, 2, 3, 4}, Params(4, 2, 0.99f));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->Apply(s->NextStep(), Make({0.1f, 0.4f, 0.3f, 0.2f})).ok());
  EXPECT_THAT(s->block(), ElementsAre(kMask, 11, 12, kMask));
  ASSERT_TRUE(s->Apply(s->NextStep(), Make({0.1f, 0.4f, 0.3f, 0.2f}, 20)).ok());
  EXPECT_TRUE(s->done());
  EXPECT_THAT(s->FinalTokens(), ElementsAre(20, 11));
}

TEST(SequenceTest, AutoregressivePlansAreCausalOneTokenSteps) {
  GenerationParams p = Params(4, 3, 0.9f);
  p.mode = DecodeMode::kAutoregressive;
  auto s = Sequence::Create({1, 2, 3}, p);
  ASSERT_TRUE(s.ok());
  StepPlan plan = s->NextStep();
  EXPECT_THAT(plan.tokens, ElementsAre(1, 2, 3));
  EXPECT_EQ(plan.attention_block, 1);
  EXPECT_EQ(plan.persist, 3);
  EXPECT_EQ(plan.logits_from, 2);  // the last prompt position predicts the next token
  ASSERT_TRUE(s->Apply(plan, Make({0.3f})).ok());
  plan = s->NextStep();
  EXPECT_EQ(plan.start, 3);
  EXPECT_THAT(plan.tokens, ElementsAre(10));
  ASSERT_TRUE(s->Apply(plan, Make({0.3f}, kStop)).ok());
  EXPECT_TRUE(s->done());
  EXPECT_EQ(s->finish_reason(), FinishReason::kStop);
  EXPECT_THAT(s->FinalTokens(), ElementsAre(10, kStop));
}

TEST(SequenceTest, StreamsEachFinalTokenOnce) {
  auto s = Sequence::Create({1, 2, 3, 4}, Params(2, 4, 0.0f));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->Apply(s->NextStep(), Make({.5f, .5f})).ok());
  EXPECT_THAT(s->TakeNewTokens(), ElementsAre(10, 11));
  EXPECT_TRUE(s->TakeNewTokens().empty());
  ASSERT_TRUE(s->Apply(s->NextStep(), Make({.5f, .5f}, 30)).ok());
  EXPECT_THAT(s->TakeNewTokens(), ElementsAre(30, 31));
}

TEST(SequenceTest, ResetCacheReprefillsFromCommittedTokens) {
  auto s = Sequence::Create({1, 2, 3, 4}, Params(2, 4, 0.0f));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->Apply(s->NextStep(), Make({.5f, .5f})).ok());
  s->ResetCache();
  StepPlan plan = s->NextStep();
  EXPECT_EQ(plan.start, 0);
  EXPECT_THAT(plan.tokens, ElementsAreArray({1, 2, 3, 4, 10, 11, kMask, kMask}));
  EXPECT_EQ(plan.persist, 6);
}

TEST(SequenceTest, RejectsBadParamsNamingTheField) {
  GenerationParams p = Params(4, 0, 0.9f);
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("max_new_tokens"));
  p = Params(4, 8, 1.5f);
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("threshold"));
  p = Params(4, 8, 0.9f);
  p.stop_ids = {kMask};
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("mask"));
  p = Params(4, 8, 0.9f);
  p.sampling.top_p = 0;
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("top_p"));
  EXPECT_FALSE(Sequence::Create({}, Params(4, 8, 0.9f)).ok());
}

}  // namespace
}  // namespace dmoe::engine
