// The LLaDA2.0 / Ling 2.0 router (MODEL-SPEC.md §1.3): sigmoid scores, expert_bias for
// selection only, group-limited top-k, renormalisation and routed_scaling_factor. A pure
// function shared by the attention service (which routes) and placement logic.
#ifndef DMOE_MODEL_MOE_ROUTING_H_
#define DMOE_MODEL_MOE_ROUTING_H_

#include <cstdint>
#include <vector>

namespace dmoe::model {

struct RoutingParams {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};

// Routing of `num_tokens` tokens: slot s of token t is expert experts[t*top_k+s] with weight
// weights[t*top_k+s]. Slots are in torch.topk order (descending biased score, ties to the lower
// expert id).
struct Routing {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

// `logits` [num_tokens, num_experts] are the F32 router logits (h @ W_gate^T); `bias` [E].
Routing RouteTokens(const float* logits, int64_t num_tokens, const float* bias,
                    const RoutingParams& params);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_MOE_ROUTING_H_
