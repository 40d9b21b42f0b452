// Random-weight LLaDA2.0 / Ling 2.0 checkpoints in the exact Hugging Face layout (config.json
// fields of MODEL-SPEC.md §1.1, tensor names and shapes of §2), for tests, demos and
// benchmarks. Same spec and seed -> byte-identical files.
#ifndef DMOE_TOOLS_CHECKPOINT_GEN_RANDOM_CHECKPOINT_H_
#define DMOE_TOOLS_CHECKPOINT_GEN_RANDOM_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "model/config.h"

namespace dmoe::tools {

// `<source tree>/tools/data/tiny_tokenizer`: the tokenizer the tiny models are meant for.
std::string DefaultTokenizerDir();

// Everything that determines a random checkpoint. The defaults are the `tiny` preset. Shape
// fields mean what they mean in config.json / model::ModelConfig. Values are deterministic
// and platform-independent: each tensor depends only on `seed` and its name (splitmix64 in
// counter mode + Irwin-Hall normals; see docs/checkpoints.md).
struct RandomCheckpointSpec {
  model::ModelKind kind = model::ModelKind::kBlockDiffusion;  // LLaDA2MoeModelLM, else Ling 2.0
  DType dtype = DType::kBF16;  // every tensor but the router's (torch_dtype in config.json)
  DType router_dtype = DType::kF32;  // mlp.gate.weight and mlp.gate.expert_bias

  int64_t vocab_size = 4096;
  int64_t hidden_size = 64;
  int64_t num_hidden_layers = 3;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t head_dim = 16;
  int64_t intermediate_size = 128;  // dense SwiGLU of layers < first_k_dense_replace
  int64_t moe_intermediate_size = 32;
  int64_t num_experts = 16;
  int64_t num_experts_per_tok = 4;
  int64_t num_shared_experts = 1;
  int64_t n_group = 4;
  int64_t topk_group = 2;
  int64_t first_k_dense_replace = 1;
  double routed_scaling_factor = 2.5;
  bool norm_topk_prob = true;
  bool moe_router_enable_expert_bias = true;
  double rms_norm_eps = 1e-6;
  double rope_theta = 600000.0;
  double partial_rotary_factor = 0.5;
  int64_t max_position_embeddings = 32768;
  bool use_qk_norm = true;
  bool tie_word_embeddings = false;  // true: no lm_head.weight is written
  // -1 / empty: the id of "<|endoftext|>" in the tokenizer when there is one, else left out.
  int64_t pad_token_id = -1;
  std::vector<int64_t> eos_token_ids;

  uint64_t seed = 0;
  // 1 -> model.safetensors; N > 1 -> model.safetensors.index.json +
  // model-0000i-of-0000N.safetensors, split by bytes, tensors in model order. A tensor's
  // values depend only on the seed and its name, not on the sharding.
  int num_shards = 1;

  // Initialisation, chosen so activations stay O(1) through any depth: each linear weight is
  // N(0, init_std^2), where init_std = 0 means 1/sqrt(fan_in) per matrix (every projection
  // keeps unit variance, so each layer adds an O(1) update to a unit-scale residual stream).
  // A GPT-style 0.02 would make every layer a ~1% perturbation of the token embedding.
  double init_std = 0.0;
  double embedding_std = 1.0;     // model.word_embeddings
  // lm_head.weight std; 0 means 1/sqrt(hidden_size). The logit std is about
  // lm_head_std * sqrt(hidden_size): ~1 (the default) gives a nearly uniform output (top-1
  // confidence ~0.005 at vocab 4096, one token per threshold-decoding forward); ~5 spreads
  // confidences over (0, 1); ~8 puts many above 0.9. For tiny (hidden 64): 0.6 -> ~5.
  double lm_head_std = 0.0;
  double norm_std = 0.05;         // every RMSNorm weight is 1 + N(0, norm_std^2)
  double expert_bias_std = 0.1;   // mlp.gate.expert_bias ~ N(0, expert_bias_std^2)
  // Skewed routing (expert balancing tests and benches, docs/expert-balancing.md): in every
  // MoE layer, `hot_experts` consecutive experts starting at hot_expert_first (+ the MoE
  // layer index x hot_expert_stride, mod num_experts) get hot_expert_bias added to their
  // expert_bias, so the router picks them more often (the bias counts for selection only,
  // not for the combine weights). 0 hot experts or a 0 bias: no skew.
  int64_t hot_experts = 0;
  double hot_expert_bias = 0.0;
  int64_t hot_expert_first = 0;
  int64_t hot_expert_stride = 0;

  // Files of this directory (tokenizer.json, tokenizer_config.json, ...) are copied next to
  // the weights. Empty: copy nothing. The default is skipped silently when it does not exist;
  // any other missing directory is NOT_FOUND.
  std::string tokenizer_dir = DefaultTokenizerDir();
};

// The `tiny` preset (= RandomCheckpointSpec{}): vocab 4096, hidden 64, 3 layers (layer 0 dense,
// width 128), 4 heads / 2 KV heads of 16, 16 experts of width 32 (top-4, 4 groups, top-2
// groups), 1 shared expert, BF16. 797,248 parameters, 1.6 MB.
RandomCheckpointSpec TinyCheckpointSpec();
// The engine benchmark's miniature LLaDA2.0 (`bench-mini`): vocab 8192, hidden 512, 8 layers
// (layer 0 dense, width 1408), 8 heads / 4 KV heads of 64, 256 experts of width 128 (top-8,
// 8 groups, top-4 groups), 1 shared expert, BF16, rope_theta 6e5, partial_rotary_factor 0.5,
// routed_scaling_factor 2.5. 371.5 M parameters, 745 MB; written in a few seconds.
RandomCheckpointSpec BenchMiniCheckpointSpec();
// "tiny" or "bench-mini"; INVALID_ARGUMENT naming the preset otherwise.
absl::StatusOr<RandomCheckpointSpec> RandomCheckpointPreset(std::string_view name);
std::vector<std::string> RandomCheckpointPresetNames();

// The config.json text for `spec` (HF layout, keys sorted, 2-space indent), after checking
// that model::ParseModelConfig accepts it. Token ids are the spec's (no tokenizer lookup).
absl::StatusOr<std::string> RandomCheckpointConfigJson(const RandomCheckpointSpec& spec);

// Writes config.json, the weights and the tokenizer files into `dir` (created if needed).
// Tensors are generated and written one at a time, so memory stays at about the largest
// tensor. Rewriting into an existing directory replaces the previous checkpoint, stale shards
// included. INVALID_ARGUMENT for an inconsistent spec or a tokenizer with ids >= vocab_size.
absl::Status WriteRandomCheckpoint(const RandomCheckpointSpec& spec, const std::string& dir);

}  // namespace dmoe::tools

#endif  // DMOE_TOOLS_CHECKPOINT_GEN_RANDOM_CHECKPOINT_H_
