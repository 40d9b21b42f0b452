#include "model/config.h"

#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/spec_tensors.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::model {
namespace {

using ::dmoe_testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kSource[] = "/ckpt/config.json";

// LLaDA2.0-mini as in MODEL-SPEC.md §1.1 (HF values).
Json MiniConfig() {
  return Json::parse(R"({
    "architectures": ["LLaDA2MoeModelLM"],
    "model_type": "llada2_moe",
    "attention_dropout": 0.0,
    "embedding_dropout": 0.0,
    "output_dropout": 0.0,
    "first_k_dense_replace": 1,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "moe_intermediate_size": 512,
    "moe_router_enable_expert_bias": true,
    "n_group": 8,
    "norm_head": false,
    "norm_softmax": false,
    "norm_topk_prob": true,
    "num_attention_heads": 16,
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 20,
    "num_key_value_heads": 4,
    "num_shared_experts": 1,
    "output_router_logits": false,
    "pad_token_id": 156892,
    "eos_token_id": 156892,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-06,
    "rope_scaling": null,
    "rope_theta": 600000,
    "rotary_dim": 64,
    "routed_scaling_factor": 2.5,
    "router_dtype": "fp32",
    "score_function": "sigmoid",
    "tie_word_embeddings": false,
    "topk_group": 4,
    "torch_dtype": "bfloat16",
    "use_bias": false,
    "use_cache": true,
    "use_qk_norm": true,
    "use_qkv_bias": false,
    "use_rmsnorm": true,
    "use_sliding_window": false,
    "vocab_size": 157184
  })");
}

absl::StatusOr<ModelConfig> Parse(const Json& j) { return ParseModelConfig(j.dump(), kSource); }

TEST(ConfigTest, ParsesLlada2Mini) {
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(MiniConfig()));
  EXPECT_EQ(c.kind, ModelKind::kBlockDiffusion);
  EXPECT_EQ(c.architecture, "LLaDA2MoeModelLM");
  EXPECT_EQ(c.model_type, "llada2_moe");
  EXPECT_EQ(c.vocab_size, 157184);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 20);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 5120);
  EXPECT_EQ(c.moe_intermediate_size, 512);
  EXPECT_EQ(c.num_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.num_shared_experts, 1);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.score_function, "sigmoid");
  EXPECT_TRUE(c.moe_router_enable_expert_bias);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 600000.0);
  EXPECT_DOUBLE_EQ(c.partial_rotary_factor, 0.5);
  EXPECT_EQ(c.rotary_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_TRUE(c.use_qk_norm);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  EXPECT_EQ(c.pad_token_id, 156892);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{156892});
  EXPECT_EQ(c.block_length, 32);
  EXPECT_EQ(c.q_width(), 2048);
  EXPECT_EQ(c.kv_width(), 512);
  EXPECT_EQ(c.qkv_width(), 3072);
  EXPECT_FALSE(c.IsMoeLayer(0));
  EXPECT_TRUE(c.IsMoeLayer(1));
  EXPECT_TRUE(c.IsMoeLayer(19));
}

// The counts are the tensor table of MODEL-SPEC.md §2 summed (dmoe_testing::SpecTensorShapes,
// written from the config fields independently of model/config.cc), and land on what the
// model card publishes (MODEL-SPEC.md §1.1): "1.43B activated of 16.26B", 789M non-embedding
// active.
TEST(ConfigTest, Llada2MiniParameterCounts) {
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(MiniConfig()));
  const dmoe_testing::ParameterCounts spec = dmoe_testing::SpecParameterCounts(c);
  EXPECT_EQ(c.TotalParameters(), spec.total);
  EXPECT_EQ(c.ActiveParameters(), spec.active);
  EXPECT_NEAR(static_cast<double>(c.TotalParameters()) / 1e9, 16.26, 0.005);
  EXPECT_NEAR(static_cast<double>(c.ActiveParameters()) / 1e9, 1.43, 0.005);
  EXPECT_NEAR(static_cast<double>(c.ActiveParameters() - 2 * c.vocab_size * c.hidden_size) / 1e6,
              789.0, 0.5);
}

// MODEL-SPEC.md §1.1: flash ~102.9B total, ~6.15B active.
TEST(ConfigTest, Llada2FlashParameterCounts) {
  Json j = MiniConfig();
  j["num_hidden_layers"] = 32;
  j["hidden_size"] = 4096;
  j["num_attention_heads"] = 32;
  j["intermediate_size"] = 9216;
  j["moe_intermediate_size"] = 1024;
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  const dmoe_testing::ParameterCounts spec = dmoe_testing::SpecParameterCounts(c);
  EXPECT_EQ(c.TotalParameters(), spec.total);
  EXPECT_EQ(c.ActiveParameters(), spec.active);
  EXPECT_NEAR(static_cast<double>(c.TotalParameters()) / 1e9, 102.9, 0.05);
  EXPECT_NEAR(static_cast<double>(c.ActiveParameters()) / 1e9, 6.15, 0.01);
}

TEST(ConfigTest, TiedEmbeddingsDropLmHead) {
  Json j = MiniConfig();
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig untied, Parse(j));
  j["tie_word_embeddings"] = true;
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig tied, Parse(j));
  EXPECT_TRUE(tied.tie_word_embeddings);
  EXPECT_EQ(untied.TotalParameters() - tied.TotalParameters(), tied.vocab_size * tied.hidden_size);
  EXPECT_EQ(untied.ActiveParameters() - tied.ActiveParameters(),
            tied.vocab_size * tied.hidden_size);
}

// Each config field that changes the tensor set changes the counts exactly as the tensor
// table does: dense vs MoE layers, experts, shared experts, router bias, QK norms, GQA widths,
// head_dim, tied embeddings.
struct CountCase {
  const char* name;
  std::function<void(Json&)> mutate;
};

class ParameterCountTest : public ::testing::TestWithParam<CountCase> {};

TEST_P(ParameterCountTest, CountsEqualTheSpecTensorTable) {
  Json j = MiniConfig();
  GetParam().mutate(j);
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  const dmoe_testing::ParameterCounts spec = dmoe_testing::SpecParameterCounts(c);
  EXPECT_EQ(c.TotalParameters(), spec.total);
  EXPECT_EQ(c.ActiveParameters(), spec.active);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, ParameterCountTest,
    ::testing::Values(
        CountCase{"Mini", [](Json&) {}},
        CountCase{"AllLayersMoe", [](Json& j) { j["first_k_dense_replace"] = 0; }},
        CountCase{"ThreeDenseLayers", [](Json& j) { j["first_k_dense_replace"] = 3; }},
        CountCase{"DenseOnly",
                  [](Json& j) {
                    j["num_hidden_layers"] = 2;
                    j["first_k_dense_replace"] = 2;
                    for (const char* f : {"num_experts", "num_experts_per_tok",
                                          "moe_intermediate_size"}) {
                      j.erase(f);
                    }
                  }},
        CountCase{"NoSharedExpert", [](Json& j) { j["num_shared_experts"] = 0; }},
        CountCase{"TwoSharedExperts", [](Json& j) { j["num_shared_experts"] = 2; }},
        CountCase{"TopOne", [](Json& j) { j["num_experts_per_tok"] = 1; }},
        CountCase{"SixtyFourExperts", [](Json& j) { j["num_experts"] = 64; }},
        CountCase{"NoExpertBias", [](Json& j) { j["moe_router_enable_expert_bias"] = false; }},
        CountCase{"NoQkNorm", [](Json& j) { j["use_qk_norm"] = false; }},
        CountCase{"MultiHeadAttention", [](Json& j) { j["num_key_value_heads"] = 16; }},
        CountCase{"NarrowHeads", [](Json& j) { j["head_dim"] = 64; }},
        CountCase{"Tied", [](Json& j) { j["tie_word_embeddings"] = true; }}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ConfigTest, AutoregressiveParent) {
  Json j = MiniConfig();
  j["architectures"] = {"BailingMoeV2ForCausalLM"};
  j["model_type"] = "bailing_moe_v2";
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.kind, ModelKind::kAutoregressive);
  EXPECT_EQ(c.architecture, "BailingMoeV2ForCausalLM");
}

TEST(ConfigTest, ModelTypeAloneOrArchitectureAlone) {
  Json j = MiniConfig();
  j.erase("architectures");
  j["model_type"] = "bailing_moe_v2";
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig by_type, Parse(j));
  EXPECT_EQ(by_type.kind, ModelKind::kAutoregressive);
  EXPECT_EQ(by_type.architecture, "BailingMoeV2ForCausalLM");

  j = MiniConfig();
  j.erase("model_type");
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig by_arch, Parse(j));
  EXPECT_EQ(by_arch.kind, ModelKind::kBlockDiffusion);
  EXPECT_EQ(by_arch.model_type, "llada2_moe");
}

TEST(ConfigTest, UnknownArchitectureIsNamed) {
  Json j = MiniConfig();
  j["architectures"] = {"Qwen3MoeForCausalLM"};
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 AllOf(HasSubstr(kSource), HasSubstr("unknown architecture"),
                                       HasSubstr("'Qwen3MoeForCausalLM'"))));
  j = MiniConfig();
  j["model_type"] = "qwen3_moe";
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 AllOf(HasSubstr(kSource), HasSubstr("'qwen3_moe'"))));
  j = MiniConfig();
  j["model_type"] = "bailing_moe_v2";  // architecture says llada2_moe
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("does not match model_type 'bailing_moe_v2'")));
  j = MiniConfig();
  j.erase("architectures");
  j.erase("model_type");
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("missing required field 'architectures'")));
}

TEST(ConfigTest, MissingRequiredFields) {
  for (const char* field : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size", "num_experts", "num_experts_per_tok",
                            "moe_intermediate_size"}) {
    SCOPED_TRACE(field);
    Json j = MiniConfig();
    j.erase(field);
    EXPECT_THAT(Parse(j),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr(std::string(kSource) + ": missing required field '" + field +
                                   "'")));
  }
}

TEST(ConfigTest, NullCountsAsMissing) {
  Json j = MiniConfig();
  j["hidden_size"] = nullptr;
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("missing required field 'hidden_size'")));
}

TEST(ConfigTest, DenseOnlyModelNeedsNoMoeFields) {
  Json j = MiniConfig();
  j["num_hidden_layers"] = 2;
  j["first_k_dense_replace"] = 2;
  for (const char* f : {"num_experts", "num_experts_per_tok", "moe_intermediate_size"}) j.erase(f);
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_FALSE(c.IsMoeLayer(1));
}

TEST(ConfigTest, Defaults) {
  Json j = {{"architectures", {"LLaDA2MoeModelLM"}},
            {"vocab_size", 1000},
            {"hidden_size", 256},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 8},
            {"intermediate_size", 512},
            {"num_experts", 8},
            {"num_experts_per_tok", 2},
            {"moe_intermediate_size", 64}};
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.head_dim, 32);               // hidden / heads
  EXPECT_EQ(c.num_key_value_heads, 8);     // = heads
  EXPECT_EQ(c.rotary_dim, 16);             // int(32 * 0.5)
  EXPECT_EQ(c.first_k_dense_replace, 0);
  EXPECT_EQ(c.n_group, 1);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_EQ(c.num_shared_experts, 0);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 1.0);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_TRUE(c.moe_router_enable_expert_bias);
  EXPECT_TRUE(c.use_qk_norm);  // MODEL-SPEC.md §7: missing means true
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 600000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.pad_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.block_length, 32);
}

TEST(ConfigTest, HeadDimMayDifferFromHiddenOverHeads) {
  Json j = MiniConfig();
  j["head_dim"] = 64;
  j.erase("rotary_dim");
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.q_width(), 1024);
  EXPECT_EQ(c.rotary_dim, 32);
}

TEST(ConfigTest, RotaryDimFromFactorTruncates) {
  Json j = MiniConfig();
  j.erase("rotary_dim");
  j["partial_rotary_factor"] = 0.25;
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.rotary_dim, 32);
  j["rotary_dim"] = 96;  // explicit value wins
  DMOE_ASSERT_OK_AND_ASSIGN(c, Parse(j));
  EXPECT_EQ(c.rotary_dim, 96);
}

TEST(ConfigTest, EosTokenIdIntOrList) {
  Json j = MiniConfig();
  j["eos_token_id"] = {156892, 156895};
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{156892, 156895}));
  j["eos_token_id"] = "156892";
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("'eos_token_id' must be an integer or a list")));
}

TEST(ConfigTest, DtypeSpellings) {
  Json j = MiniConfig();
  j["torch_dtype"] = "float32";
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.torch_dtype, DType::kF32);
  j.erase("torch_dtype");
  j["dtype"] = "float16";  // newer transformers
  DMOE_ASSERT_OK_AND_ASSIGN(c, Parse(j));
  EXPECT_EQ(c.torch_dtype, DType::kF16);
}

TEST(ConfigTest, BlockLengthExtension) {
  Json j = MiniConfig();
  j["block_length"] = 64;
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.block_length, 64);
}

struct BadConfigCase {
  const char* name;
  std::function<void(Json&)> mutate;
  absl::StatusCode code;
  std::vector<std::string> substrings;
};

class BadConfigTest : public ::testing::TestWithParam<BadConfigCase> {};

TEST_P(BadConfigTest, FailsWithClearMessage) {
  Json j = MiniConfig();
  GetParam().mutate(j);
  absl::StatusOr<ModelConfig> result = Parse(j);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), GetParam().code) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(kSource));
  for (const std::string& s : GetParam().substrings) {
    EXPECT_THAT(std::string(result.status().message()), HasSubstr(s));
  }
}

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr absl::StatusCode kUnimplemented = absl::StatusCode::kUnimplemented;

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfigTest,
    ::testing::Values(
        BadConfigCase{"ZeroHeads", [](Json& j) { j["num_attention_heads"] = 0; }, kInvalid,
                      {"'num_attention_heads' must be > 0"}},
        BadConfigCase{"KvHeadsNotDividing", [](Json& j) { j["num_key_value_heads"] = 3; },
                      kInvalid, {"'num_key_value_heads' (3) does not divide", "(16)"}},
        BadConfigCase{"HeadsNotDividingHidden",
                      [](Json& j) {
                        j.erase("head_dim");
                        j["num_attention_heads"] = 12;
                        j["num_key_value_heads"] = 4;
                      },
                      kInvalid, {"'num_attention_heads' (12) does not divide hidden_size (2048)"}},
        BadConfigCase{"OddRotaryDim", [](Json& j) { j["rotary_dim"] = 63; }, kInvalid,
                      {"rotary_dim 63", "even"}},
        BadConfigCase{"OddRotaryDimFromFactor",
                      [](Json& j) {
                        j.erase("rotary_dim");
                        j["head_dim"] = 70;  // int(70 * 0.5) = 35: odd
                      },
                      kInvalid, {"rotary_dim 35"}},
        BadConfigCase{"RotaryDimAboveHeadDim", [](Json& j) { j["rotary_dim"] = 256; }, kInvalid,
                      {"rotary_dim 256", "head_dim 128"}},
        BadConfigCase{"BadPartialRotaryFactor", [](Json& j) { j["partial_rotary_factor"] = 1.5; },
                      kInvalid, {"'partial_rotary_factor' must be in (0, 1]"}},
        BadConfigCase{"GroupsNotDividingExperts", [](Json& j) { j["num_experts"] = 250; },
                      kInvalid, {"'n_group' (8) does not divide num_experts (250)"}},
        BadConfigCase{"TopkGroupAboveGroups", [](Json& j) { j["topk_group"] = 9; }, kInvalid,
                      {"'topk_group' (9) exceeds n_group (8)"}},
        BadConfigCase{"TooManyExpertsPerToken",
                      [](Json& j) {
                        j["topk_group"] = 1;
                        j["num_experts_per_tok"] = 33;  // one group holds 32
                      },
                      kInvalid, {"'num_experts_per_tok' (33)", "= 32"}},
        BadConfigCase{"DenseLayersAboveLayers", [](Json& j) { j["first_k_dense_replace"] = 21; },
                      kInvalid, {"'first_k_dense_replace' (21)", "num_hidden_layers 20"}},
        BadConfigCase{"SoftmaxRouter", [](Json& j) { j["score_function"] = "softmax"; },
                      kUnimplemented, {"score_function 'softmax'", "only 'sigmoid'"}},
        BadConfigCase{"ZeroVocab", [](Json& j) { j["vocab_size"] = 0; }, kInvalid,
                      {"'vocab_size' must be > 0"}},
        BadConfigCase{"NegativeExperts", [](Json& j) { j["num_experts"] = -8; }, kInvalid,
                      {"'num_experts' must be > 0"}},
        BadConfigCase{"StringHidden", [](Json& j) { j["hidden_size"] = "2048"; }, kInvalid,
                      {"'hidden_size' must be an integer", "\"2048\""}},
        BadConfigCase{"FractionalLayers", [](Json& j) { j["num_hidden_layers"] = 20.5; },
                      kInvalid, {"'num_hidden_layers' must be an integer"}},
        BadConfigCase{"BoolAsString", [](Json& j) { j["use_qk_norm"] = "true"; }, kInvalid,
                      {"'use_qk_norm' must be true or false"}},
        BadConfigCase{"UnknownDtype", [](Json& j) { j["torch_dtype"] = "int8"; }, kInvalid,
                      {"'torch_dtype'", "int8"}},
        BadConfigCase{"EosOutOfVocab", [](Json& j) { j["eos_token_id"] = 157184; }, kInvalid,
                      {"'eos_token_id' has id 157184"}},
        BadConfigCase{"PadOutOfVocab", [](Json& j) { j["pad_token_id"] = 200000; }, kInvalid,
                      {"'pad_token_id' (200000)"}},
        BadConfigCase{"ArchitecturesNotList", [](Json& j) { j["architectures"] = "LLaDA2MoeModelLM"; },
                      kInvalid, {"'architectures' must be a non-empty list"}},
        BadConfigCase{"QkvBias", [](Json& j) { j["use_qkv_bias"] = true; }, kUnimplemented,
                      {"'use_qkv_bias'"}},
        BadConfigCase{"Bias", [](Json& j) { j["use_bias"] = true; }, kUnimplemented,
                      {"'use_bias'"}},
        BadConfigCase{"NormHead", [](Json& j) { j["norm_head"] = true; }, kUnimplemented,
                      {"'norm_head'"}},
        BadConfigCase{"Gelu", [](Json& j) { j["hidden_act"] = "gelu"; }, kUnimplemented,
                      {"hidden_act 'gelu'"}},
        BadConfigCase{"Yarn",
                      [](Json& j) { j["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}}; },
                      kUnimplemented, {"rope_scaling", "yarn"}},
        BadConfigCase{"ZeroEps", [](Json& j) { j["rms_norm_eps"] = 0; }, kInvalid,
                      {"'rms_norm_eps' must be > 0"}}),
    [](const ::testing::TestParamInfo<BadConfigCase>& info) { return info.param.name; });

TEST(ConfigTest, MalformedJson) {
  EXPECT_THAT(ParseModelConfig("{\"vocab_size\": 12,", kSource),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(kSource), HasSubstr("malformed JSON"))));
  EXPECT_THAT(ParseModelConfig("[1, 2]", kSource),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("JSON object")));
  // Found by tests/fuzz/config_fuzz.cc: a number too large for a double made the re-parse
  // that finds the error's position throw out_of_range, which escaped ParseModelConfig.
  EXPECT_THAT(ParseModelConfig("{\"vocab_size\": 1e999}", kSource),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("malformed JSON"), HasSubstr("number overflow"))));
}

TEST(ConfigTest, LoadFromDirectory) {
  dmoe_testing::TempDir tmp;
  EXPECT_THAT(LoadModelConfig(tmp.path()),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr(absl::StrCat(tmp.path(), " has no config.json"))));
  EXPECT_THAT(LoadModelConfig(tmp.Join("missing")),
              StatusIs(absl::StatusCode::kNotFound,
                       absl::StrCat("model directory ", tmp.Join("missing"), " does not exist")));
  dmoe_testing::WriteFileOrDie(tmp.Join("file"), "x");
  EXPECT_THAT(LoadModelConfig(tmp.Join("file")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("is not a directory")));
  dmoe_testing::WriteFileOrDie(tmp.Join("config.json"), MiniConfig().dump(2));
  DMOE_ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(tmp.path()));
  EXPECT_EQ(c.hidden_size, 2048);
  dmoe_testing::WriteFileOrDie(tmp.Join("config.json"), "{");
  EXPECT_THAT(LoadModelConfig(tmp.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(tmp.Join("config.json"))));
}

}  // namespace
}  // namespace dmoe::model
