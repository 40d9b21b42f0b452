// Per-head RMSNorm of Q and K fused with partial NeoX RoPE, in place on the QKV rows
// (ReferenceKernels::QkNormRope, MODEL-SPEC.md §1.2): per Q/K head, x = q_norm * (x *
// rsqrt(mean(x^2) + eps)), then for i < R/2 the pair (i, i + R/2) is rotated by
// angle = pos * inv_freq[i]; dims R..D-1 pass through. V heads are not touched.
#ifndef DMOE_MODEL_CUDA_QK_NORM_ROPE_H_
#define DMOE_MODEL_CUDA_QK_NORM_ROPE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace dmoe::gpu {

struct QkNormRopeArgs {
  float* qkv = nullptr;  // F32 [m, row_stride]: Nq Q heads, then Nkv K heads, of D
  int64_t m = 0;
  int64_t row_stride = 0;              // >= (Nq + Nkv) * D
  const int32_t* positions = nullptr;  // I32 [m], absolute positions
  int64_t num_heads = 0;               // Nq
  int64_t num_kv_heads = 0;            // Nkv
  int64_t head_dim = 0;                // D, at most 256
  int64_t rotary_dim = 0;              // R, even, <= D
  const float* q_norm = nullptr;       // F32 [D], or null: no QK-norm
  const float* k_norm = nullptr;       // F32 [D], or null
  float eps = 1e-6f;
  // F32 [R / 2]: inv_freq[j] = 1 / theta^(2j / R), computed on the host in F32 exactly as the
  // CPU backends do (model::RopeInverseFrequencies), so both sides rotate by the same angles.
  const float* inv_freq = nullptr;
};

// One warp per (row, head). m == 0 is a no-op. INVALID_ARGUMENT for null pointers, D outside
// [1, 256], an odd R or R > D.
absl::Status LaunchQkNormRope(const QkNormRopeArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_QK_NORM_ROPE_H_
