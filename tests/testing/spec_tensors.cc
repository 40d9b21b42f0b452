#include "tests/testing/spec_tensors.h"

#include <string_view>

#include "absl/strings/str_cat.h"

namespace dmoe_testing {

std::map<std::string, std::vector<int64_t>> SpecTensorShapes(const dmoe::model::ModelConfig& c) {
  const int64_t h = c.hidden_size, d = c.head_dim;
  std::map<std::string, std::vector<int64_t>> t;
  t["model.word_embeddings.weight"] = {c.vocab_size, h};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t[p + "input_layernorm.weight"] = {h};
    t[p + "attention.query_key_value.weight"] = {
        (c.num_attention_heads + 2 * c.num_key_value_heads) * d, h};
    if (c.use_qk_norm) {
      t[p + "attention.query_layernorm.weight"] = {d};
      t[p + "attention.key_layernorm.weight"] = {d};
    }
    t[p + "attention.dense.weight"] = {h, c.num_attention_heads * d};
    t[p + "post_attention_layernorm.weight"] = {h};
    if (l < c.first_k_dense_replace) {
      t[p + "mlp.gate_proj.weight"] = {c.intermediate_size, h};
      t[p + "mlp.up_proj.weight"] = {c.intermediate_size, h};
      t[p + "mlp.down_proj.weight"] = {h, c.intermediate_size};
      continue;
    }
    t[p + "mlp.gate.weight"] = {c.num_experts, h};
    if (c.moe_router_enable_expert_bias) t[p + "mlp.gate.expert_bias"] = {c.num_experts};
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string x = absl::StrCat(p, "mlp.experts.", e, ".");
      t[x + "gate_proj.weight"] = {c.moe_intermediate_size, h};
      t[x + "up_proj.weight"] = {c.moe_intermediate_size, h};
      t[x + "down_proj.weight"] = {h, c.moe_intermediate_size};
    }
    const int64_t shared = c.num_shared_experts * c.moe_intermediate_size;
    if (shared > 0) {
      t[p + "mlp.shared_experts.gate_proj.weight"] = {shared, h};
      t[p + "mlp.shared_experts.up_proj.weight"] = {shared, h};
      t[p + "mlp.shared_experts.down_proj.weight"] = {h, shared};
    }
  }
  t["model.norm.weight"] = {h};
  if (!c.tie_word_embeddings) t["lm_head.weight"] = {c.vocab_size, h};
  return t;
}

ParameterCounts SpecParameterCounts(const dmoe::model::ModelConfig& c) {
  // "model.layers.{l}.mlp.experts.{e}.*": routed expert e (shared experts are
  // "mlp.shared_experts.*"). A token uses num_experts_per_tok of them; all routed experts of a
  // layer have the same size, so counting experts 0..k-1 as the used ones is exact.
  constexpr std::string_view kRouted = ".mlp.experts.";
  ParameterCounts counts;
  for (const auto& [name, shape] : SpecTensorShapes(c)) {
    int64_t n = 1;
    for (int64_t dim : shape) n *= dim;
    counts.total += n;
    const size_t at = name.find(kRouted);
    const bool skipped = at != std::string::npos &&
                         std::stoll(name.substr(at + kRouted.size())) >= c.num_experts_per_tok;
    if (!skipped) counts.active += n;
  }
  return counts;
}

}  // namespace dmoe_testing
