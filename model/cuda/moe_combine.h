// The weighted combine of a MoE layer, fused with the shared expert and the residual add
// (the loop at the end of Model::Forward's MoE branch, same order of float operations):
//   f[t] = (sum over slots s = 0..k-1, in slot order, of weights[t, s] * slot_out[t*k + s])
//          + shared[t]
//   x[t] += f[t]
#ifndef DMOE_MODEL_CUDA_MOE_COMBINE_H_
#define DMOE_MODEL_CUDA_MOE_COMBINE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace dmoe::gpu {

struct MoeCombineArgs {
  float* x = nullptr;               // F32 [num_tokens, hidden], updated in place
  const float* slot_out = nullptr;  // F32 [num_tokens * top_k, hidden], unweighted expert rows
  const float* weights = nullptr;   // F32 [num_tokens, top_k] routing weights
  const float* shared = nullptr;    // F32 [num_tokens, hidden] shared-expert output, or null
  int64_t num_tokens = 0;
  int64_t hidden = 0;
  int32_t top_k = 0;
};

// num_tokens == 0 is a no-op. INVALID_ARGUMENT for null pointers or bad sizes.
absl::Status LaunchMoeCombine(const MoeCombineArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_MOE_COMBINE_H_
