// LLaDA2.0 / Ling 2.0 model configuration, parsed from a Hugging Face `config.json`
// (MODEL-SPEC.md §1.1).
#ifndef DMOE_MODEL_CONFIG_H_
#define DMOE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace dmoe::model {

// Which decoding the checkpoint was trained for.
enum class ModelKind {
  kBlockDiffusion,   // LLaDA2MoeModelLM / llada2_moe: block-causal attention, no logit shift
  kAutoregressive,   // BailingMoeV2ForCausalLM / bailing_moe_v2: causal, logits[i] predict i+1
};

// Every field the forward pass uses. Field names follow config.json.
struct ModelConfig {
  ModelKind kind = ModelKind::kBlockDiffusion;
  std::string model_type;      // "llada2_moe" or "bailing_moe_v2"
  std::string architecture;    // architectures[0]
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;                // defaults to hidden_size / num_attention_heads
  int64_t intermediate_size = 0;       // dense SwiGLU width (layers < first_k_dense_replace)
  int64_t moe_intermediate_size = 0;   // per routed expert and per shared expert
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t num_shared_experts = 0;      // shared expert width = this * moe_intermediate_size
  int64_t n_group = 1;
  int64_t topk_group = 1;
  int64_t first_k_dense_replace = 0;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  std::string score_function = "sigmoid";  // only "sigmoid" is supported (LLaDA2 / Ling 2.0)
  bool moe_router_enable_expert_bias = true;
  double rms_norm_eps = 1e-6;
  double rope_theta = 600000.0;
  double partial_rotary_factor = 0.5;
  int64_t rotary_dim = 0;              // int(head_dim * partial_rotary_factor) unless given
  int64_t max_position_embeddings = 32768;
  bool use_qk_norm = true;             // missing key means true (MODEL-SPEC.md §7)
  bool tie_word_embeddings = false;
  DType torch_dtype = DType::kBF16;
  int64_t pad_token_id = -1;
  std::vector<int64_t> eos_token_ids;  // eos_token_id (int or list), may be empty
  int64_t block_length = 32;           // not in HF configs; dmoe accepts an optional "block_length"

  // Derived sizes.
  int64_t q_width() const { return num_attention_heads * head_dim; }
  int64_t kv_width() const { return num_key_value_heads * head_dim; }
  int64_t qkv_width() const { return q_width() + 2 * kv_width(); }
  bool IsMoeLayer(int64_t layer) const { return layer >= first_k_dense_replace; }

  // Parameter counts (elements). Total: every tensor of MODEL-SPEC.md §2 (router expert_bias
  // included, lm_head excluded when tied). Active (the model-card convention, "1.43B activated
  // of 16.26B" for LLaDA2.0-mini): all non-expert parameters (embeddings, lm_head, norms,
  // attention, routers, dense FFN) + the shared experts + num_experts_per_tok routed experts
  // per MoE layer.
  int64_t TotalParameters() const;
  int64_t ActiveParameters() const;
};

// Parses config.json text. `source` (usually the file path) is named in every error, e.g.
// "config.json: field 'num_attention_heads' (16) does not divide hidden_size ...".
// Unknown fields are ignored and a JSON null counts as absent; missing required fields
// ("<source>: missing required field 'hidden_size'"), wrongly typed and inconsistent values and
// unknown architectures are INVALID_ARGUMENT. Features the forward pass does not implement
// (score_function other than "sigmoid", use_bias / use_qkv_bias / norm_head /
// use_sliding_window true, hidden_act other than "silu", a non-null rope_scaling) are
// UNIMPLEMENTED.
// Required: architectures or model_type, vocab_size, hidden_size, num_hidden_layers,
// num_attention_heads; intermediate_size when first_k_dense_replace > 0; num_experts,
// num_experts_per_tok and moe_intermediate_size when there is an MoE layer. Everything else
// takes the defaults above (num_key_value_heads defaults to num_attention_heads).
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);

// The first thing a command checks about --model, with a message that names the actual
// problem: NOT_FOUND "model directory DIR does not exist", FAILED_PRECONDITION "DIR is not a
// directory", NOT_FOUND "DIR has no config.json (...)".
absl::Status CheckModelDir(const std::string& dir);

// CheckModelDir, then reads `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// FNV-1a 64 of the config.json bytes as 16 lowercase hex digits: pods and the scheduler
// compare it to refuse a peer that serves another model.
std::string ConfigFingerprint(std::string_view config_json);
// ConfigFingerprint of `<dir>/config.json`; NOT_FOUND naming the file when it cannot be read.
absl::StatusOr<std::string> ConfigFingerprintOfDir(const std::string& dir);

namespace internal {
// Reads a whole file. NOT_FOUND "<path>: not found" when missing; other errors name the path.
absl::StatusOr<std::string> ReadCheckpointFile(const std::string& path);
}  // namespace internal

}  // namespace dmoe::model

#endif  // DMOE_MODEL_CONFIG_H_
