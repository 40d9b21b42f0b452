// The LLaDA2.0 weights of one process, bound by name from a Checkpoint (MODEL-SPEC.md §2).
// Large matrices stay memory-mapped in their checkpoint dtype; only the small norm vectors
// and the router bias are converted to F32 copies.
#ifndef DMOE_MODEL_WEIGHTS_H_
#define DMOE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "model/checkpoint.h"

namespace dmoe::model {

// Values per scale of a q8 matrix (ggml's q8_0 block), and the name of a q8 matrix's scale
// tensor: "<matrix name>.q8_scale".
inline constexpr int64_t kQ8Block = 32;
inline constexpr char kQ8ScaleSuffix[] = ".q8_scale";

// A row-major [rows, cols] matrix in PyTorch nn.Linear layout ([out, in]); not owned.
// q8 (dtype kI8): value [r][c] = int8 data[r][c] * scales[r * cols / kQ8Block + c / kQ8Block],
// one F32 multiply (docs/quantization.md).
struct WeightMatrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  const float* scales = nullptr;  // kI8 only: [rows, cols / kQ8Block]

  bool empty() const { return data == nullptr; }
  size_t nbytes() const {
    const size_t values = static_cast<size_t>(rows * cols);
    return values * DTypeSize(dtype) +
           (dtype == DType::kI8 ? values / kQ8Block * sizeof(float) : 0);
  }
  // Row `row` as F32 into dst[0, cols): the stored values, converted (q8: dequantized).
  void RowToF32(int64_t row, float* dst) const {
    ConvertToF32(dtype, Row(row), dst, static_cast<size_t>(cols));
    if (dtype != DType::kI8) return;
    const float* s = scales + row * (cols / kQ8Block);
    for (int64_t c = 0; c < cols; ++c) dst[c] *= s[c / kQ8Block];
  }
  // Pointer to the first element of `row`.
  const void* Row(int64_t row) const {
    return static_cast<const char*>(data) + static_cast<size_t>(row * cols) * DTypeSize(dtype);
  }
};

// SwiGLU FFN: down(silu(gate(h)) * up(h)). gate/up [I, H], down [H, I].
struct FfnWeights {
  WeightMatrix gate;
  WeightMatrix up;
  WeightMatrix down;
  bool empty() const { return gate.empty(); }
  size_t nbytes() const { return gate.nbytes() + up.nbytes() + down.nbytes(); }
};

struct LayerWeights {
  std::vector<float> input_norm;     // [H]
  WeightMatrix qkv;                  // [(Nq + 2 Nkv) * D, H]
  std::vector<float> q_norm;         // [D]
  std::vector<float> k_norm;         // [D]
  WeightMatrix o_proj;               // [H, Nq * D]
  std::vector<float> post_norm;      // [H]
  // Dense layers (layer < first_k_dense_replace).
  FfnWeights dense;
  // MoE layers.
  WeightMatrix router;               // [E, H], computed in F32
  std::vector<float> expert_bias;    // [E] (zeros when the model has none)
  FfnWeights shared;                 // width num_shared_experts * moe_intermediate_size
  std::vector<FfnWeights> experts;   // [E]; entries outside the loaded range are empty
};

struct ModelWeights {
  WeightMatrix embed;                // [V, H]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;     // [H]
  WeightMatrix lm_head;              // [V, H]
};

// Which tensors a process loads (disaggregated roles load disjoint parts).
struct WeightLoadOptions {
  // Embeddings, attention, dense layers, routers, shared experts, norms, lm_head.
  bool load_dense = true;
  // Routed experts [expert_first, expert_last) of every MoE layer; expert_last < 0 means all.
  bool load_experts = true;
  int64_t expert_first = 0;
  int64_t expert_last = -1;
};

// Binds every tensor the options ask for, checking names and shapes against the config.
// Errors name the file and tensor (missing tensor, wrong shape expected vs found). Tensors the
// model does not use are ignored with one log line.
absl::StatusOr<ModelWeights> LoadModelWeights(const Checkpoint& checkpoint,
                                              const WeightLoadOptions& options);

// Bytes of the matrices `weights` references (what a forward may read).
uint64_t WeightBytes(const ModelWeights& weights);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_WEIGHTS_H_
