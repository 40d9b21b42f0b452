// BuildGenerationParams: what a request leaves out takes the model's default or
// GenerationParams' own; what it sets wins.
#include "engine/generation_params.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

ModelDecodingDefaults Defaults() {
  return {.mode = DecodeMode::kDiffusion, .block_length = 16, .mask_id = 99, .stop_ids = {7, 8}};
}

TEST(GenerationParamsTest, EmptyRequestTakesEveryDefault) {
  const GenerationParams p = BuildGenerationParams({}, Defaults());
  const GenerationParams built_in;
  EXPECT_EQ(p.mode, DecodeMode::kDiffusion);
  EXPECT_EQ(p.block_length, 16);  // the model's, not GenerationParams' 32
  EXPECT_EQ(p.mask_id, 99);
  EXPECT_THAT(p.stop_ids, ElementsAre(7, 8));
  EXPECT_EQ(p.max_new_tokens, built_in.max_new_tokens);
  EXPECT_EQ(p.threshold, built_in.threshold);
  EXPECT_EQ(p.steps, built_in.steps);
  EXPECT_EQ(p.sampling.temperature, built_in.sampling.temperature);
  EXPECT_EQ(p.sampling.top_k, built_in.sampling.top_k);
  EXPECT_EQ(p.sampling.top_p, built_in.sampling.top_p);
  EXPECT_EQ(p.sampling.seed, built_in.sampling.seed);
}

TEST(GenerationParamsTest, RequestOverridesEachField) {
  const DecodingRequest r{.mode = DecodeMode::kAutoregressive,
                          .max_new_tokens = 5,
                          .threshold = 0.5f,
                          .block_length = 4,
                          .steps = 3,
                          .temperature = 0.7f,
                          .top_k = 20,
                          .top_p = 0.9f,
                          .seed = 11,
                          .stop_ids = std::vector<int32_t>{}};
  const GenerationParams p = BuildGenerationParams(r, Defaults());
  EXPECT_EQ(p.mode, DecodeMode::kAutoregressive);
  EXPECT_EQ(p.max_new_tokens, 5);
  EXPECT_EQ(p.threshold, 0.5f);
  EXPECT_EQ(p.block_length, 4);
  EXPECT_EQ(p.steps, 3);
  EXPECT_EQ(p.sampling.temperature, 0.7f);
  EXPECT_EQ(p.sampling.top_k, 20);
  EXPECT_EQ(p.sampling.top_p, 0.9f);
  EXPECT_EQ(p.sampling.seed, 11u);
  EXPECT_THAT(p.stop_ids, IsEmpty());  // set and empty: only the length limit stops
  EXPECT_EQ(p.mask_id, 99);            // the mask id is the model's, never the request's
}

TEST(GenerationParamsTest, ModeFollowsTheCheckpointKind) {
  model::ModelConfig config;
  config.kind = model::ModelKind::kAutoregressive;
  config.block_length = 8;
  ModelDecodingDefaults d = ModelDecodingDefaults::For(config, 3, {1});
  EXPECT_EQ(d.mode, DecodeMode::kAutoregressive);
  EXPECT_EQ(d.block_length, 8);
  config.kind = model::ModelKind::kBlockDiffusion;
  EXPECT_EQ(ModelDecodingDefaults::For(config, 3, {1}).mode, DecodeMode::kDiffusion);
}

TEST(GenerationParamsTest, ParseDecodeMode) {
  EXPECT_EQ(*ParseDecodeMode("", "--mode"), std::nullopt);
  EXPECT_EQ(*ParseDecodeMode("diffusion", "--mode"), DecodeMode::kDiffusion);
  EXPECT_EQ(*ParseDecodeMode("ar", "--mode"), DecodeMode::kAutoregressive);
  absl::StatusOr<std::optional<DecodeMode>> bad = ParseDecodeMode("causal", "--mode");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "--mode must be 'diffusion' or 'ar', got 'causal'");
}

}  // namespace
}  // namespace dmoe::engine

namespace dmoe::engine {
namespace {

TEST(GenerationParamsEditingTest, EditingIsOffUnlessAsked) {
  const GenerationParams p = BuildGenerationParams({}, Defaults());
  EXPECT_FALSE(p.editing());
  DecodingRequest off;
  off.editing = EditingPreset::kOff;
  EXPECT_FALSE(BuildGenerationParams(off, Defaults()).editing());
  EXPECT_EQ(BuildGenerationParams(off, Defaults()).threshold, GenerationParams().threshold);
}

TEST(GenerationParamsEditingTest, PresetsAreTheModelCardsModesAndExplicitKnobsWin) {
  DecodingRequest speed;
  speed.editing = EditingPreset::kSpeed;
  GenerationParams p = BuildGenerationParams(speed, Defaults());
  EXPECT_EQ(p.threshold, 0.5f);
  EXPECT_EQ(p.edit_threshold, 0.0f);
  EXPECT_EQ(p.max_post_steps, 16);
  DecodingRequest quality;
  quality.editing = EditingPreset::kQuality;
  quality.threshold = 0.8f;
  quality.max_post_steps = 4;
  p = BuildGenerationParams(quality, Defaults());
  EXPECT_EQ(p.threshold, 0.8f);
  EXPECT_EQ(p.edit_threshold, 0.5f);
  EXPECT_EQ(p.max_post_steps, 4);
  DecodingRequest explicit_only;
  explicit_only.edit_threshold = 0.3f;
  p = BuildGenerationParams(explicit_only, Defaults());
  EXPECT_TRUE(p.editing());
  EXPECT_EQ(p.edit_threshold, 0.3f);
  EXPECT_EQ(p.max_post_steps, 16);
  EXPECT_EQ(p.threshold, GenerationParams().threshold);
}

TEST(GenerationParamsEditingTest, ParsesPresetNames) {
  EXPECT_EQ(*ParseEditingPreset("speed", "--editing"), EditingPreset::kSpeed);
  EXPECT_EQ(*ParseEditingPreset("quality", "--editing"), EditingPreset::kQuality);
  EXPECT_EQ(*ParseEditingPreset("off", "--editing"), EditingPreset::kOff);
  EXPECT_FALSE(ParseEditingPreset("", "--editing")->has_value());
  auto bad = ParseEditingPreset("fast", "params.editing");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("params.editing"));
  EXPECT_EQ(EditingPresetName(EditingPreset::kQuality), "quality");
}

}  // namespace
}  // namespace dmoe::engine
