// The denoising policy against hand-made proposals: plans (what each forward carries), the
// threshold rule, the reference step schedule, stops and truncation.
#include "engine/sequence.h"

#include <cmath>

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

// --- LLaDA2.1 token editing (M2T + T2T) ---

GenerationParams Editing(int64_t block, int64_t max_new, float threshold, float edit_threshold,
                         int64_t max_post_steps) {
  GenerationParams p = Params(block, max_new, threshold);
  p.edit_threshold = edit_threshold;
  p.max_post_steps = max_post_steps;
  return p;
}

Proposal Rows(const std::vector<int32_t>& tokens, const std::vector<float>& conf) {
  return {.tokens = tokens, .confidence = conf};
}

TEST(SequenceEditingTest, OffByDefault) {
  EXPECT_FALSE(GenerationParams().editing());
  EXPECT_FALSE(GenerationParams().edit_threshold.has_value());
}

TEST(SequenceEditingTest, FillsAndEditsInOneForwardRemasksAndEndsWhenStable) {
  // Prompt of 6, B = 4: the block [4, 8) holds the prompt tail {5, 6}, never edited.
  auto s = Sequence::Create({1, 2, 3, 4, 5, 6}, Editing(4, 2, 0.9f, 0.5f, 2));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->Apply(s->NextStep(), Rows({10, 11, 12, 13}, {0.99f, 0.99f, 0.95f, 0.2f})).ok());
  EXPECT_THAT(s->block(), ElementsAre(5, 6, 12, kMask));  // prompt tail kept, 0.95 > 0.9 filled
  EXPECT_EQ(s->edits(), 0);
  // M2T falls back to the most confident mask; T2T rewrites position 2 (0.6 > 0.5, changed).
  ASSERT_TRUE(s->Apply(s->NextStep(), Rows({20, 21, 22, 23}, {0.99f, 0.99f, 0.6f, 0.3f})).ok());
  EXPECT_THAT(s->block(), ElementsAre(5, 6, 22, 23));
  EXPECT_THAT(s->DenoisedEdited(), ElementsAre(false, false, true, false));
  EXPECT_EQ(s->edits(), 1);
  // No masks left: a post step. It turns position 3 back into the mask.
  ASSERT_TRUE(s->Apply(s->NextStep(), Rows({5, 6, 22, kMask}, {0.9f, 0.9f, 0.9f, 0.7f})).ok());
  EXPECT_THAT(s->block(), ElementsAre(5, 6, 22, kMask));
  EXPECT_EQ(s->edits(), 2);
  EXPECT_EQ(s->remasks(), 1);
  // ... which is filled again (confidence 0.1: the top-1 fallback).
  ASSERT_TRUE(s->Apply(s->NextStep(), Rows({5, 6, 22, 40}, {0.9f, 0.9f, 0.9f, 0.1f})).ok());
  EXPECT_THAT(s->block(), ElementsAre(5, 6, 22, 40));
  EXPECT_FALSE(s->done());
  // Stable: no masks at the top and nothing edited (0.4 is not > 0.5) -> the block ends.
  ASSERT_TRUE(s->Apply(s->NextStep(), Rows({5, 6, 23, 40}, {0.9f, 0.9f, 0.4f, 0.9f})).ok());
  EXPECT_TRUE(s->done());
  EXPECT_EQ(s->forwards(), 5);
  EXPECT_THAT(s->FinalTokens(), ElementsAre(22, 40));
  // Logprobs: position 2 from the forward that rewrote it, position 3 from its last fill.
  EXPECT_THAT(s->FinalLogprobs(),
              ElementsAre(::testing::FloatEq(std::log(0.6f)), ::testing::FloatEq(std::log(0.1f))));
}

TEST(SequenceEditingTest, PostStepBudgetEndsTheBlockWithoutAnotherForward) {
  for (int64_t post : {0, 1, 3}) {
    // Every forward proposes different, confident tokens: each post step edits.
    auto s = Sequence::Create({1, 2}, Editing(2, 2, 0.9f, 0.5f, post));
    ASSERT_TRUE(s.ok());
    int32_t base = 10;
    while (!s->done()) {
      ASSERT_TRUE(s->Apply(s->NextStep(), Rows({base, base + 1}, {0.95f, 0.95f})).ok());
      base += 2;
    }
    // One forward fills the block, then `post` edit-only forwards; S = 0 is LLaDA2.0's loop.
    EXPECT_EQ(s->forwards(), 1 + post) << post;
    EXPECT_EQ(s->edits(), 2 * post) << post;
    EXPECT_THAT(s->FinalTokens(), ElementsAre(base - 2, base - 1));
  }
}

TEST(SequenceEditingTest, ForwardBoundEndsABlockThatWouldNeverSettle) {
  GenerationParams p = Editing(2, 4, 0.9f, 0.5f, 16);
  p.max_block_forwards = 5;
  auto s = Sequence::Create({1, 2}, p);
  ASSERT_TRUE(s.ok());
  // Masks are filled, filled tokens are re-masked: without a bound this never ends.
  int64_t guard = 0;
  while (!s->done() && ++guard < 100) {
    const std::vector<int32_t> block = s->block();
    std::vector<int32_t> tokens;
    for (size_t i = 0; i < block.size(); ++i) tokens.push_back(block[i] == kMask ? 10 : kMask);
    ASSERT_TRUE(s->Apply(s->NextStep(), Rows(tokens, {0.95f, 0.95f})).ok());
  }
  ASSERT_TRUE(s->done());
  EXPECT_LE(s->forwards(), 2 * (5 + 2));  // two blocks, each at most bound + B forwards
  EXPECT_THAT(s->FinalTokens(), ElementsAre(10, 10, 10, 10));
  EXPECT_GT(s->remasks(), 0);
}

TEST(SequenceEditingTest, RejectsBadEditingParamsNamingTheField) {
  GenerationParams p = Editing(4, 8, 0.9f, 1.5f, 16);
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("edit_threshold"));
  p = Editing(4, 8, 0.9f, 0.5f, -1);
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("max_post_steps"));
  p = Editing(4, 8, 0.9f, 0.5f, 16);
  p.mode = DecodeMode::kAutoregressive;
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("edit_threshold"));
  p = Editing(4, 8, 0.9f, 0.5f, 16);
  p.max_block_forwards = -1;
  EXPECT_THAT(std::string(p.Validate(100).message()), ::testing::HasSubstr("max_block_forwards"));
}

}  // namespace
}  // namespace dmoe::engine
