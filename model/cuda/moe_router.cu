#include <climits>

#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/moe_router.h"

namespace dmoe::gpu {
namespace {

using internal::kFullMask;

constexpr int kMaxExperts = 4096;
constexpr int kMaxGroups = 64;
constexpr int kMaxTopK = 32;

// (value, index) candidates ordered as a stable descending sort orders them: larger value
// first, equal values by lower index. index == INT_MAX is "no candidate".
struct Candidate {
  float value;
  int index;
};

__device__ __forceinline__ bool Better(const Candidate& a, const Candidate& b) {
  if (b.index == INT_MAX) return a.index != INT_MAX;
  if (a.index == INT_MAX) return false;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ Candidate WarpBest(Candidate c) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Candidate o{__shfl_xor_sync(kFullMask, c.value, offset),
                __shfl_xor_sync(kFullMask, c.index, offset)};
    if (Better(o, c)) c = o;
  }
  return c;
}

// Dynamic shared memory: scores[E], biased[E], chosen flags[E] (bytes), group data.
__global__ void MoeRouterKernel(MoeRouterArgs a) {
  extern __shared__ float smem[];
  const int e_count = a.num_experts;
  float* scores = smem;
  float* biased = scores + e_count;
  unsigned char* taken = reinterpret_cast<unsigned char*>(biased + e_count);
  __shared__ float group_score[kMaxGroups];
  __shared__ bool group_kept[kMaxGroups];
  __shared__ int chosen[kMaxTopK];

  const int lane = threadIdx.x;
  const int64_t t = blockIdx.x;
  const float* row = a.logits + t * e_count;
  for (int e = lane; e < e_count; e += 32) {
    const float s = 1.0f / (1.0f + expf(-row[e]));
    scores[e] = s;
    biased[e] = s + (a.bias != nullptr ? a.bias[e] : 0.0f);
    taken[e] = 0;
  }
  __syncwarp();

  if (a.n_group > 1) {
    const int per_group = e_count / a.n_group;
    // A group's score is the sum of its two best biased scores (best first, then second).
    for (int g = lane; g < a.n_group; g += 32) {
      Candidate best{0.0f, INT_MAX}, second{0.0f, INT_MAX};
      for (int i = 0; i < per_group; ++i) {
        const Candidate c{biased[g * per_group + i], i};
        if (Better(c, best)) {
          second = best;
          best = c;
        } else if (Better(c, second)) {
          second = c;
        }
      }
      float sum = 0.0f;
      sum += best.value;
      if (per_group >= 2) sum += second.value;
      group_score[g] = sum;
      group_kept[g] = false;
    }
    __syncwarp();
    if (lane == 0) {
      for (int round = 0; round < a.topk_group; ++round) {
        Candidate best{0.0f, INT_MAX};
        for (int g = 0; g < a.n_group; ++g) {
          const Candidate c{group_score[g], g};
          if (!group_kept[g] && Better(c, best)) best = c;
        }
        group_kept[best.index] = true;
      }
    }
    __syncwarp();
    for (int e = lane; e < e_count; e += 32) {
      if (!group_kept[e / per_group]) biased[e] = -INFINITY;
    }
    __syncwarp();
  }

  for (int slot = 0; slot < a.top_k; ++slot) {
    Candidate best{0.0f, INT_MAX};
    for (int e = lane; e < e_count; e += 32) {
      const Candidate c{biased[e], e};
      if (!taken[e] && Better(c, best)) best = c;
    }
    best = WarpBest(best);
    if (lane == 0) {
      chosen[slot] = best.index;
      taken[best.index] = 1;
    }
    __syncwarp();
  }

  if (lane == 0) {
    const int k = a.top_k;
    float sum = 0.0f;
    for (int s = 0; s < k; ++s) sum += scores[chosen[s]];
    for (int s = 0; s < k; ++s) {
      float w = scores[chosen[s]];
      if (a.norm_topk_prob && k > 1) w = w / (sum + 1e-20f);
      a.experts[t * k + s] = chosen[s];
      a.weights[t * k + s] = w * a.routed_scaling_factor;
    }
  }
}

}  // namespace

absl::Status LaunchMoeRouter(const MoeRouterArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return absl::OkStatus();
  if (a.logits == nullptr || a.experts == nullptr || a.weights == nullptr || a.num_tokens < 0) {
    return absl::InvalidArgumentError("LaunchMoeRouter: null pointer");
  }
  if (a.num_experts <= 0 || a.num_experts > kMaxExperts || a.n_group <= 0 ||
      a.n_group > kMaxGroups || a.num_experts % a.n_group != 0 || a.topk_group <= 0 ||
      a.topk_group > a.n_group || a.top_k <= 0 || a.top_k > kMaxTopK ||
      a.top_k > (a.n_group > 1 ? a.num_experts / a.n_group * a.topk_group : a.num_experts)) {
    return absl::InvalidArgumentError("LaunchMoeRouter: routing parameters outside the limits");
  }
  const size_t smem = static_cast<size_t>(a.num_experts) * (2 * sizeof(float) + 1);
  MoeRouterKernel<<<static_cast<unsigned>(a.num_tokens), 32, smem, stream>>>(a);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
