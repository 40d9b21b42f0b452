#include "model/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace dmoe::model {
namespace {

// Indices of the k largest values, descending; ties resolve to the lower index (stable), the
// order torch.topk gives on CPU for distinct values.
std::vector<int32_t> TopK(const std::vector<float>& values, int64_t k) {
  // torch.topk's order: larger first, equal values by lower index. With that tie rule (and
  // NaN ranked as -inf) the order is total, so a partial sort picks exactly what a stable full
  // sort would, in O(n log k).
  auto key = [&](int32_t i) {
    return std::isnan(values[i]) ? -std::numeric_limits<float>::infinity() : values[i];
  };
  std::vector<int32_t> idx(values.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    const float ka = key(a), kb = key(b);
    return ka > kb || (ka == kb && a < b);
  });
  idx.resize(k);
  return idx;
}

}  // namespace

Routing RouteTokens(const float* logits, int64_t num_tokens, const float* bias,
                    const RoutingParams& p) {
  Routing r;
  r.num_tokens = num_tokens;
  r.top_k = p.top_k;
  r.experts.resize(num_tokens * p.top_k);
  r.weights.resize(num_tokens * p.top_k);
  const int64_t per_group = p.num_experts / p.n_group;
  std::vector<float> scores(p.num_experts), biased(p.num_experts), group_scores(p.n_group);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* row = logits + t * p.num_experts;
    for (int64_t e = 0; e < p.num_experts; ++e) {
      scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
      biased[e] = scores[e] + (bias ? bias[e] : 0.0f);
    }
    if (p.n_group > 1) {
      // A group's score is the sum of its two best biased scores.
      for (int64_t g = 0; g < p.n_group; ++g) {
        std::vector<float> members(biased.begin() + g * per_group,
                                   biased.begin() + (g + 1) * per_group);
        std::vector<int32_t> best = TopK(members, std::min<int64_t>(2, per_group));
        float sum = 0.0f;
        for (int32_t i : best) sum += members[i];
        group_scores[g] = sum;
      }
      std::vector<int32_t> kept = TopK(group_scores, p.topk_group);
      std::vector<bool> keep(p.n_group, false);
      for (int32_t g : kept) keep[g] = true;
      for (int64_t e = 0; e < p.num_experts; ++e) {
        if (!keep[e / per_group]) biased[e] = -std::numeric_limits<float>::infinity();
      }
    }
    std::vector<int32_t> chosen = TopK(biased, p.top_k);
    float sum = 0.0f;
    for (int64_t s = 0; s < p.top_k; ++s) sum += scores[chosen[s]];
    for (int64_t s = 0; s < p.top_k; ++s) {
      float w = scores[chosen[s]];
      if (p.norm_topk_prob && p.top_k > 1) w = w / (sum + 1e-20f);
      r.experts[t * p.top_k + s] = chosen[s];
      r.weights[t * p.top_k + s] = w * p.routed_scaling_factor;
    }
  }
  return r;
}

}  // namespace dmoe::model
