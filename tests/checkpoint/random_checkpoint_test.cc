#include "tools/checkpoint_gen/random_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/checkpoint.h"
#include "nlohmann/json.hpp"
#include "tests/testing/spec_tensors.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tiny_checkpoint.h"

namespace dmoe::tools {
namespace {

using ::dmoe_testing::ReadFileOrDie;
using ::dmoe_testing::StatusIs;
using ::dmoe_testing::TempDir;
using ::dmoe_testing::TinyCheckpointDir;
using ::dmoe_testing::TinySpec;
using ::dmoe_testing::WriteFileOrDie;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Json = nlohmann::json;
namespace fs = std::filesystem;

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The config the spec's shape fields describe, copied field by field (not through the
// generator's config.json).
model::ModelConfig ConfigOf(const RandomCheckpointSpec& s) {
  model::ModelConfig c;
  c.vocab_size = s.vocab_size;
  c.hidden_size = s.hidden_size;
  c.num_hidden_layers = s.num_hidden_layers;
  c.num_attention_heads = s.num_attention_heads;
  c.num_key_value_heads = s.num_key_value_heads;
  c.head_dim = s.head_dim;
  c.intermediate_size = s.intermediate_size;
  c.moe_intermediate_size = s.moe_intermediate_size;
  c.num_experts = s.num_experts;
  c.num_experts_per_tok = s.num_experts_per_tok;
  c.num_shared_experts = s.num_shared_experts;
  c.first_k_dense_replace = s.first_k_dense_replace;
  c.moe_router_enable_expert_bias = s.moe_router_enable_expert_bias;
  c.use_qk_norm = s.use_qk_norm;
  c.tie_word_embeddings = s.tie_word_embeddings;
  return c;
}

// The tensor table of MODEL-SPEC.md §2, written out independently of the generator.
std::map<std::string, std::vector<int64_t>> ExpectedTensors(const RandomCheckpointSpec& s) {
  return dmoe_testing::SpecTensorShapes(ConfigOf(s));
}

void ExpectLayout(const RandomCheckpointSpec& spec, const model::Checkpoint& ckpt) {
  const auto expected = ExpectedTensors(spec);
  std::vector<std::string> names;
  for (const auto& [name, shape] : expected) names.push_back(name);
  EXPECT_EQ(ckpt.TensorNames(), names);
  for (const auto& [name, shape] : expected) {
    SCOPED_TRACE(name);
    absl::StatusOr<model::TensorView> v = ckpt.GetWithShape(name, shape);
    ASSERT_TRUE(v.ok()) << v.status();
    const bool router = name.find("mlp.gate.") != std::string::npos;
    EXPECT_EQ(v->dtype, router ? spec.router_dtype : spec.dtype);
  }
  EXPECT_EQ(static_cast<int64_t>(ckpt.TotalTensorBytes()) > 0, true);
}

struct Moments {
  double mean = 0, std = 0;
};

Moments MomentsOf(const model::TensorView& v) {
  std::vector<float> x(static_cast<size_t>(v.numel()));
  ConvertToF32(v.dtype, v.data, x.data(), x.size());
  double sum = 0, sq = 0;
  for (float f : x) {
    sum += f;
    sq += static_cast<double>(f) * f;
  }
  const double n = static_cast<double>(x.size());
  return {sum / n, std::sqrt(std::max(0.0, sq / n - (sum / n) * (sum / n)))};
}

TEST(RandomCheckpointTest, TinyHasTheHfLayout) {
  TinyCheckpointDir tiny;
  ASSERT_TRUE(tiny.ok());
  DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, model::Checkpoint::Open(tiny.dir()));
  ExpectLayout(tiny.spec(), *ckpt);
  const model::ModelConfig& c = ckpt->config();
  EXPECT_EQ(c.kind, model::ModelKind::kBlockDiffusion);
  EXPECT_EQ(c.vocab_size, 4096);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rotary_dim, 8);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.num_experts, 16);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  EXPECT_EQ(c.num_shared_experts, 1);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  // The counts are what the files hold.
  int64_t stored = 0;
  for (const std::string& name : ckpt->TensorNames()) {
    DMOE_ASSERT_OK_AND_ASSIGN(model::TensorView v, ckpt->Get(name));
    stored += v.numel();
  }
  EXPECT_EQ(c.TotalParameters(), stored);
  EXPECT_EQ(c.ActiveParameters(), dmoe_testing::SpecParameterCounts(c).active);

  // config.json uses the HF field names of MODEL-SPEC.md §1.1.
  const Json j = Json::parse(ReadFileOrDie(tiny.dir() + "/config.json"));
  EXPECT_EQ(j["architectures"], Json::array({"LLaDA2MoeModelLM"}));
  EXPECT_EQ(j["model_type"], "llada2_moe");
  for (const char* key :
       {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
        "partial_rotary_factor", "rotary_dim", "use_qk_norm", "norm_topk_prob",
        "routed_scaling_factor", "n_group", "topk_group", "moe_router_enable_expert_bias",
        "score_function", "first_k_dense_replace", "torch_dtype", "num_experts",
        "num_experts_per_tok", "num_shared_experts", "moe_intermediate_size", "rms_norm_eps",
        "tie_word_embeddings", "max_position_embeddings", "hidden_act", "use_bias",
        "use_qkv_bias", "rope_scaling", "router_dtype"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["score_function"], "sigmoid");
}

TEST(RandomCheckpointTest, SameSeedSameBytes) {
  TinyCheckpointDir a, b;
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(ReadFileOrDie(a.dir() + "/config.json"), ReadFileOrDie(b.dir() + "/config.json"));
  EXPECT_EQ(ReadFileOrDie(a.dir() + "/model.safetensors"),
            ReadFileOrDie(b.dir() + "/model.safetensors"));

  RandomCheckpointSpec other = TinySpec();
  other.seed = 1;
  TinyCheckpointDir c(other);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(ReadFileOrDie(a.dir() + "/model.safetensors"),
            ReadFileOrDie(c.dir() + "/model.safetensors"));
}

uint64_t Fnv1a(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Pins the generator's output (splitmix64 + Irwin-Hall, platform-independent): a change here
// changes every golden file built on random checkpoints, so it must be deliberate.
TEST(RandomCheckpointTest, ValuesArePinned) {
  RandomCheckpointSpec spec = TinySpec();
  spec.dtype = DType::kF32;
  TinyCheckpointDir f32(spec);
  ASSERT_TRUE(f32.ok());
  DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, model::Checkpoint::Open(f32.dir()));
  DMOE_ASSERT_OK_AND_ASSIGN(model::TensorView emb, ckpt->Get("model.word_embeddings.weight"));
  const float* x = static_cast<const float*>(emb.data);
  EXPECT_EQ(x[0], -1.28564453f);
  EXPECT_EQ(x[1], -1.08062744f);
  EXPECT_EQ(x[2], 1.06303406f);
  EXPECT_EQ(x[3], -0.895019531f);

  TinyCheckpointDir tiny;  // the default tiny BF16 checkpoint, seed 0
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(Fnv1a(ReadFileOrDie(tiny.dir() + "/model.safetensors")), 0xeca943fba60cdf0fULL);
}

TEST(RandomCheckpointTest, ShardingDoesNotChangeValues) {
  RandomCheckpointSpec spec = TinySpec();
  spec.num_shards = 4;
  TinyCheckpointDir single, sharded(spec);
  ASSERT_TRUE(single.ok() && sharded.ok());
  EXPECT_EQ(ListDir(sharded.dir()).size() - ListDir(single.dir()).size(), 4u);
  DMOE_ASSERT_OK_AND_ASSIGN(auto a, model::Checkpoint::Open(single.dir()));
  DMOE_ASSERT_OK_AND_ASSIGN(auto b, model::Checkpoint::Open(sharded.dir()));
  ExpectLayout(spec, *b);
  for (const std::string& name : a->TensorNames()) {
    DMOE_ASSERT_OK_AND_ASSIGN(model::TensorView va, a->Get(name));
    DMOE_ASSERT_OK_AND_ASSIGN(model::TensorView vb, b->Get(name));
    ASSERT_EQ(va.nbytes, vb.nbytes);
    EXPECT_EQ(std::memcmp(va.data, vb.data, va.nbytes), 0) << name;
  }
  // HF index: metadata.total_size and weight_map.
  const Json index = Json::parse(ReadFileOrDie(sharded.dir() + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), b->TotalTensorBytes());
  EXPECT_EQ(index["weight_map"].size(), b->TensorNames().size());
  EXPECT_EQ(index["weight_map"]["model.word_embeddings.weight"],
            "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["lm_head.weight"], "model-00004-of-00004.safetensors");
}

TEST(RandomCheckpointTest, InitialisationScales) {
  RandomCheckpointSpec spec = TinySpec();
  spec.dtype = DType::kF32;
  spec.lm_head_std = 0.75;
  TinyCheckpointDir tiny(spec);
  ASSERT_TRUE(tiny.ok());
  DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, model::Checkpoint::Open(tiny.dir()));
  auto moments = [&](const std::string& name) {
    absl::StatusOr<model::TensorView> v = ckpt->Get(name);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? MomentsOf(*v) : Moments{};
  };
  Moments emb = moments("model.word_embeddings.weight");
  EXPECT_NEAR(emb.mean, 0.0, 0.01);
  EXPECT_NEAR(emb.std, 1.0, 0.01);
  Moments qkv = moments("model.layers.1.attention.query_key_value.weight");
  EXPECT_NEAR(qkv.std, 1.0 / 8.0, 0.01);  // 1/sqrt(hidden 64)
  Moments down = moments("model.layers.2.mlp.experts.3.down_proj.weight");
  EXPECT_NEAR(down.std, 1.0 / std::sqrt(32.0), 0.02);  // 1/sqrt(moe_intermediate 32)
  Moments norm = moments("model.layers.0.input_layernorm.weight");
  EXPECT_NEAR(norm.mean, 1.0, 0.03);
  EXPECT_NEAR(norm.std, 0.05, 0.03);
  Moments head = moments("lm_head.weight");
  EXPECT_NEAR(head.std, 0.75, 0.01);
  Moments bias = moments("model.layers.1.mlp.gate.expert_bias");
  EXPECT_GT(bias.std, 0.0);
}

TEST(RandomCheckpointTest, AutoregressiveAndDtypes) {
  for (DType dtype : {DType::kF32, DType::kF16}) {
    RandomCheckpointSpec spec = TinySpec();
    spec.kind = model::ModelKind::kAutoregressive;
    spec.dtype = dtype;
    spec.num_hidden_layers = 2;
    TinyCheckpointDir tiny(spec);
    ASSERT_TRUE(tiny.ok());
    DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, model::Checkpoint::Open(tiny.dir()));
    EXPECT_EQ(ckpt->config().kind, model::ModelKind::kAutoregressive);
    EXPECT_EQ(ckpt->config().architecture, "BailingMoeV2ForCausalLM");
    EXPECT_EQ(ckpt->config().model_type, "bailing_moe_v2");
    EXPECT_EQ(ckpt->config().torch_dtype, dtype);
    ExpectLayout(spec, *ckpt);
  }
}

TEST(RandomCheckpointTest, OptionalTensors) {
  RandomCheckpointSpec spec = TinySpec();
  spec.tie_word_embeddings = true;
  spec.use_qk_norm = false;
  spec.num_shared_experts = 0;
  spec.moe_router_enable_expert_bias = false;
  spec.first_k_dense_replace = 0;
  TinyCheckpointDir tiny(spec);
  ASSERT_TRUE(tiny.ok());
  DMOE_ASSERT_OK_AND_ASSIGN(auto ckpt, model::Checkpoint::Open(tiny.dir()));
  ExpectLayout(spec, *ckpt);
  EXPECT_FALSE(ckpt->Has("lm_head.weight"));
  EXPECT_TRUE(ckpt->config().tie_word_embeddings);
  EXPECT_FALSE(ckpt->config().use_qk_norm);
}

TEST(RandomCheckpointTest, RewritingReplacesTheCheckpoint) {
  TempDir tmp;
  const std::string dir = tmp.Join("ckpt");
  RandomCheckpointSpec spec = TinySpec();
  spec.tokenizer_dir.clear();
  spec.num_shards = 3;
  DMOE_ASSERT_OK(WriteRandomCheckpoint(spec, dir));
  DMOE_ASSERT_OK(WriteRandomCheckpoint(spec, dir));  // same spec again: fine
  EXPECT_EQ(ListDir(dir).size(), 5u);
  spec.num_shards = 1;
  DMOE_ASSERT_OK(WriteRandomCheckpoint(spec, dir));
  EXPECT_EQ(ListDir(dir), (std::vector<std::string>{"config.json", "model.safetensors"}));
  spec.num_shards = 2;
  spec.seed = 9;
  DMOE_ASSERT_OK(WriteRandomCheckpoint(spec, dir));
  EXPECT_EQ(ListDir(dir),
            (std::vector<std::string>{"config.json", "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors",
                                      "model.safetensors.index.json"}));
  DMOE_EXPECT_OK(model::Checkpoint::Open(dir).status());
}

TEST(RandomCheckpointTest, CopiesTokenizerAndTakesItsIds) {
  TempDir tmp;
  const std::string tok_dir = tmp.Join("tok");
  fs::create_directories(tok_dir);
  WriteFileOrDie(tok_dir + "/tokenizer.json",
                 R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}},
                     "added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": true},
                                      {"id": 4, "content": "<|mask|>", "special": true}]})");
  WriteFileOrDie(tok_dir + "/tokenizer_config.json", R"({"chat_template": "x"})");
  RandomCheckpointSpec spec = TinySpec();
  spec.tokenizer_dir = tok_dir;
  spec.num_hidden_layers = 2;
  const std::string out = tmp.Join("out");
  DMOE_ASSERT_OK(WriteRandomCheckpoint(spec, out));
  EXPECT_EQ(ReadFileOrDie(out + "/tokenizer.json"), ReadFileOrDie(tok_dir + "/tokenizer.json"));
  EXPECT_EQ(ReadFileOrDie(out + "/tokenizer_config.json"), R"({"chat_template": "x"})");
  DMOE_ASSERT_OK_AND_ASSIGN(auto config, model::LoadModelConfig(out));
  EXPECT_EQ(config.pad_token_id, 3);
  EXPECT_EQ(config.eos_token_ids, std::vector<int64_t>{3});

  // Ids the model cannot produce are an error.
  spec.vocab_size = 4;
  EXPECT_THAT(WriteRandomCheckpoint(spec, tmp.Join("small")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr(tok_dir + "/tokenizer.json"), HasSubstr("token id 4"),
                             HasSubstr("vocab_size 4"))));
  spec.tokenizer_dir = tmp.Join("missing");
  EXPECT_THAT(WriteRandomCheckpoint(spec, tmp.Join("x")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(tmp.Join("missing"))));
}

TEST(RandomCheckpointTest, DefaultTokenizerIsCopiedWhenPresent) {
  const std::string source = DefaultTokenizerDir();
  if (!fs::exists(source + "/tokenizer.json")) {
    GTEST_SKIP() << source << " does not exist yet";
  }
  TinyCheckpointDir tiny;
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(ReadFileOrDie(tiny.dir() + "/tokenizer.json"),
            ReadFileOrDie(source + "/tokenizer.json"));
  DMOE_ASSERT_OK_AND_ASSIGN(auto config, model::LoadModelConfig(tiny.dir()));
  EXPECT_GE(config.pad_token_id, 0);
  EXPECT_FALSE(config.eos_token_ids.empty());
}

TEST(RandomCheckpointTest, RejectsBadSpecs) {
  TempDir tmp;
  RandomCheckpointSpec spec = TinySpec();
  spec.n_group = 3;  // does not divide 16 experts
  EXPECT_THAT(WriteRandomCheckpoint(spec, tmp.Join("a")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'n_group' (3)")));
  EXPECT_FALSE(fs::exists(tmp.Join("a")));
  spec = TinySpec();
  spec.num_shards = 100000;
  EXPECT_THAT(WriteRandomCheckpoint(spec, tmp.Join("b")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_shards")));
  spec.num_shards = 0;
  EXPECT_THAT(WriteRandomCheckpoint(spec, tmp.Join("b")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_shards")));
}

TEST(RandomCheckpointTest, Presets) {
  EXPECT_EQ(RandomCheckpointPresetNames(), (std::vector<std::string>{"tiny", "bench-mini"}));
  EXPECT_THAT(RandomCheckpointPreset("huge"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'huge'")));
  DMOE_ASSERT_OK_AND_ASSIGN(RandomCheckpointSpec tiny, RandomCheckpointPreset("tiny"));
  EXPECT_EQ(tiny.hidden_size, 64);

  // bench-mini is checked through its config only (writing 0.75 GB is not a unit test).
  DMOE_ASSERT_OK_AND_ASSIGN(RandomCheckpointSpec mini, RandomCheckpointPreset("bench-mini"));
  DMOE_ASSERT_OK_AND_ASSIGN(std::string text, RandomCheckpointConfigJson(mini));
  DMOE_ASSERT_OK_AND_ASSIGN(model::ModelConfig c, model::ParseModelConfig(text, "bench-mini"));
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.num_hidden_layers, 8);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rotary_dim, 32);
  EXPECT_EQ(c.intermediate_size, 1408);
  EXPECT_EQ(c.moe_intermediate_size, 128);
  EXPECT_EQ(c.num_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.num_shared_experts, 1);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_DOUBLE_EQ(c.rope_theta, 600000.0);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  const dmoe_testing::ParameterCounts spec = dmoe_testing::SpecParameterCounts(c);
  EXPECT_EQ(c.TotalParameters(), spec.total);
  EXPECT_EQ(c.ActiveParameters(), spec.active);
}

}  // namespace
}  // namespace dmoe::tools
