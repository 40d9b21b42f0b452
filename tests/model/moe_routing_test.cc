// Table tests for the LLaDA2.0 router (MODEL-SPEC.md §1.3).
#include "model/moe_routing.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dmoe::model {
namespace {

using ::testing::ElementsAre;

float Logit(float p) { return std::log(p / (1 - p)); }  // sigmoid^-1

TEST(MoeRoutingTest, PicksTopKByScoreAndRenormalisesAndScales) {
  // 4 experts, one group, top-2; sigmoid scores 0.1, 0.9, 0.6, 0.3.
  std::vector<float> logits = {Logit(0.1f), Logit(0.9f), Logit(0.6f), Logit(0.3f)};
  Routing r = RouteTokens(logits.data(), 1, nullptr,
                          {.num_experts = 4, .top_k = 2, .n_group = 1, .topk_group = 1,
                           .norm_topk_prob = true, .routed_scaling_factor = 2.5f});
  EXPECT_THAT(r.experts, ElementsAre(1, 2));
  EXPECT_NEAR(r.weights[0], 0.9f / 1.5f * 2.5f, 1e-5);
  EXPECT_NEAR(r.weights[1], 0.6f / 1.5f * 2.5f, 1e-5);
}

TEST(MoeRoutingTest, BiasSelectsButDoesNotWeigh) {
  std::vector<float> logits = {Logit(0.1f), Logit(0.9f), Logit(0.6f), Logit(0.3f)};
  std::vector<float> bias = {1.0f, 0.0f, 0.0f, 0.0f};  // expert 0 now wins selection
  Routing r = RouteTokens(logits.data(), 1, bias.data(),
                          {.num_experts = 4, .top_k = 2, .n_group = 1, .topk_group = 1,
                           .norm_topk_prob = true, .routed_scaling_factor = 1.0f});
  EXPECT_THAT(r.experts, ElementsAre(0, 1));
  EXPECT_NEAR(r.weights[0], 0.1f / 1.0f, 1e-5);  // unbiased score 0.1 / (0.1 + 0.9)
  EXPECT_NEAR(r.weights[1], 0.9f / 1.0f, 1e-5);
}

TEST(MoeRoutingTest, GroupLimitedSelectionUsesTopTwoSumPerGroup) {
  // 8 experts in 4 groups of 2, keep 2 groups, top-2 experts.
  // Group sums: g0 = .5+.5 = 1.0, g1 = .95+.05 = 1.0 (tie -> lower group), g2 = .6+.6 = 1.2,
  // g3 = .3+.3 = 0.6. Kept: g2, g0. Expert 2 (0.95) is excluded although it is the best.
  std::vector<float> p = {.5f, .5f, .95f, .05f, .6f, .6f, .3f, .3f};
  std::vector<float> logits;
  for (float v : p) logits.push_back(Logit(v));
  Routing r = RouteTokens(logits.data(), 1, nullptr,
                          {.num_experts = 8, .top_k = 2, .n_group = 4, .topk_group = 2,
                           .norm_topk_prob = false, .routed_scaling_factor = 1.0f});
  EXPECT_THAT(r.experts, ElementsAre(4, 5));
  EXPECT_NEAR(r.weights[0], 0.6f, 1e-5);  // no renormalisation
}

TEST(MoeRoutingTest, TokensAreRoutedIndependently) {
  std::vector<float> logits = {Logit(0.9f), Logit(0.1f), Logit(0.1f), Logit(0.9f)};
  Routing r = RouteTokens(logits.data(), 2, nullptr,
                          {.num_experts = 2, .top_k = 1, .n_group = 1, .topk_group = 1,
                           .norm_topk_prob = true, .routed_scaling_factor = 1.0f});
  EXPECT_THAT(r.experts, ElementsAre(0, 1));
  EXPECT_THAT(r.weights, ElementsAre(::testing::FloatNear(0.9f, 1e-5),
                                     ::testing::FloatNear(0.9f, 1e-5)));  // top_k 1: no renorm
}

}  // namespace
}  // namespace dmoe::model
