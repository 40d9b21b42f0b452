// The compute seam: every op of the LLaDA2.0 forward pass behind one interface, implemented by
// a naive reference (model/cpu/reference_kernels.h, the oracle) and the fast CPU backend
// (model/cpu/fast_kernels.h). Activations are F32; weights are read in their stored dtype.
//
// Contract shared by all implementations: every output element's floating-point reduction
// order depends only on the op's shape parameters (K, head_dim, keys visible to the query),
// never on how many other rows are in the batch or on the thread split. That makes a forward
// batch-invariant: a sequence gets bit-identical logits alone, batched with 15 others, with a
// KV cache or with full recompute — which is what lets dmoe reproduce the reference
// generate() exactly while batching and caching.
#ifndef DMOE_MODEL_KERNELS_H_
#define DMOE_MODEL_KERNELS_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "model/weights.h"

namespace dmoe::model {

// Per-head RMSNorm of Q and K followed by NeoX RoPE on the first `rotary_dim` dims.
struct QkNormRopeParams {
  int64_t num_heads = 0;        // Nq
  int64_t num_kv_heads = 0;     // Nkv
  int64_t head_dim = 0;         // D
  int64_t rotary_dim = 0;       // R (even, <= D)
  float eps = 1e-6f;
  double rope_theta = 600000.0;
  const float* q_norm = nullptr;  // [D]; null = no QK-norm
  const float* k_norm = nullptr;  // [D]
};

// Attention of `num_queries` query rows over `num_keys` keys with the block-causal mask
// (MODEL-SPEC.md §4.2): key j is visible to query i iff key_pos[j] / block <= q_pos[i] / block.
// block = 1 gives causal attention. Keys are visited in index order; callers pass them in
// position order.
struct AttentionArgs {
  int64_t num_queries = 0;
  const float* q = nullptr;          // [num_queries, q_stride], heads at [h * head_dim]
  int64_t q_stride = 0;
  const int64_t* q_positions = nullptr;   // [num_queries]
  int64_t num_keys = 0;
  const float* const* k_rows = nullptr;   // [num_keys] -> [Nkv * D]
  const float* const* v_rows = nullptr;   // [num_keys] -> [Nkv * D]
  const int64_t* k_positions = nullptr;   // [num_keys]
  int64_t block = 1;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;                // 1/sqrt(head_dim)
  float* out = nullptr;              // [num_queries, out_stride]
  int64_t out_stride = 0;
};

// One routed expert's share of a MoE layer: rows of the hidden state it processes and where
// its (unweighted) outputs go.
struct ExpertTask {
  const FfnWeights* weights = nullptr;
  std::vector<int32_t> input_rows;   // rows of `hidden`
  std::vector<int32_t> output_rows;  // rows of `out`, same length
};

// Not thread-safe: each forward owns its Kernels instance (implementations hold scratch and a
// thread pool).
class Kernels {
 public:
  virtual ~Kernels() = default;
  virtual std::string_view name() const = 0;

  // y[m, w.rows] = x[m, w.cols] @ w^T (F32 accumulation). x and y rows are contiguous.
  virtual void MatMul(const float* x, int64_t m, const WeightMatrix& w, float* y) = 0;
  // y[r] = weight * x[r] / sqrt(mean(x[r]^2) + eps) for `rows` rows of width n. y may alias x.
  virtual void RmsNorm(const float* x, int64_t rows, int64_t n, const float* weight, float eps,
                       float* y) = 0;
  // In place on qkv rows [m, (Nq + 2 Nkv) * D]: Q and K heads are normalised and rotated.
  virtual void QkNormRope(float* qkv, int64_t m, const int64_t* positions,
                          const QkNormRopeParams& params) = 0;
  virtual void Attention(const AttentionArgs& args) = 0;
  // out[i] = silu(gate[i]) * up[i] for i < count. out may alias gate.
  virtual void SwiGlu(const float* gate, const float* up, int64_t count, float* out) = 0;
  // SwiGLU FFN over all m rows: y[m, H] = down(silu(gate x) * up x).
  virtual void Ffn(const float* x, int64_t m, const FfnWeights& w, float* y) = 0;
  // Runs every task's FFN: out[output_rows[i]] = FFN_task(hidden[input_rows[i]]), rows of
  // width `hidden_size`. Tasks may be processed in any order or concurrently.
  virtual void Experts(const float* hidden, int64_t hidden_size,
                       const std::vector<ExpertTask>& tasks, float* out) = 0;
};

using KernelsPtr = std::unique_ptr<Kernels>;

}  // namespace dmoe::model

#endif  // DMOE_MODEL_KERNELS_H_
