// The LLaDA2.0 / Ling 2.0 router on the GPU, in F32 (model::RouteTokens, MODEL-SPEC.md §1.3):
// scores = sigmoid(logits); selection on scores + expert_bias; with n_group > 1 only the
// topk_group groups with the largest sum of their two best biased scores stay eligible; the
// top_k eligible experts are chosen (descending biased score, ties to the lower expert id,
// the order of torch.topk / RouteTokens); weights are the unbiased scores, renormalised to
// sum 1 when norm_topk_prob (and top_k > 1), times routed_scaling_factor. Every float
// operation is the one RouteTokens performs, in the same order.
#ifndef DMOE_MODEL_CUDA_MOE_ROUTER_H_
#define DMOE_MODEL_CUDA_MOE_ROUTER_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace dmoe::gpu {

struct MoeRouterArgs {
  const float* logits = nullptr;  // F32 [num_tokens, num_experts] router logits (h @ W_gate^T)
  int64_t num_tokens = 0;
  const float* bias = nullptr;  // F32 [num_experts] expert_bias, or null (no bias)
  int32_t num_experts = 0;      // E, at most 4096, a multiple of n_group
  int32_t top_k = 0;            // k, at most 32 and at most the eligible experts
  int32_t n_group = 1;          // at most 64
  int32_t topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
  int32_t* experts = nullptr;  // I32 [num_tokens, top_k]: slot s of token t at [t*k + s]
  float* weights = nullptr;    // F32 [num_tokens, top_k]
};

// One warp per token. num_tokens == 0 is a no-op. INVALID_ARGUMENT for null pointers or
// parameters outside the limits above.
absl::Status LaunchMoeRouter(const MoeRouterArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_MOE_ROUTER_H_
