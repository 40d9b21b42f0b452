// The tensor table of MODEL-SPEC.md §2 (every tensor of an HF LLaDA2.0 / Ling 2.0 checkpoint,
// name -> PyTorch [out, in] shape) written out from the config fields, independently of
// model/ and tools/: the oracle of the checkpoint layout and parameter-count tests.
#ifndef DMOE_TESTS_TESTING_SPEC_TENSORS_H_
#define DMOE_TESTS_TESTING_SPEC_TENSORS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace dmoe_testing {

// Every tensor a checkpoint of `config` holds: embeddings; per layer the two norms, fused QKV,
// QK norms (use_qk_norm), output projection, then a dense SwiGLU (layer <
// first_k_dense_replace) or router (+ expert_bias), routed and shared experts; final norm;
// lm_head unless tied.
std::map<std::string, std::vector<int64_t>> SpecTensorShapes(
    const dmoe::model::ModelConfig& config);

struct ParameterCounts {
  int64_t total = 0;
  int64_t active = 0;
};

// Elements summed over SpecTensorShapes. Active follows the model cards ("1.43B activated of
// 16.26B"): every tensor but the routed experts a token skips, i.e. each MoE layer keeps
// num_experts_per_tok of its num_experts routed experts.
ParameterCounts SpecParameterCounts(const dmoe::model::ModelConfig& config);

}  // namespace dmoe_testing

#endif  // DMOE_TESTS_TESTING_SPEC_TENSORS_H_
