// The naive reference for every op (STYLE.md §10): single-threaded straight loops with F32
// accumulation, each commented with the formula it implements. Never optimised; every other
// path is tested against it.
#ifndef DMOE_MODEL_CPU_REFERENCE_KERNELS_H_
#define DMOE_MODEL_CPU_REFERENCE_KERNELS_H_

#include "model/kernels.h"

namespace dmoe::model {

// Thread-compatible.
class ReferenceKernels : public Kernels {
 public:
  std::string_view name() const override { return "reference"; }
  void MatMul(const float* x, int64_t m, const WeightMatrix& w, float* y) override;
  void RmsNorm(const float* x, int64_t rows, int64_t n, const float* weight, float eps,
               float* y) override;
  void QkNormRope(float* qkv, int64_t m, const int64_t* positions,
                  const QkNormRopeParams& params) override;
  void Attention(const AttentionArgs& args) override;
  void SwiGlu(const float* gate, const float* up, int64_t count, float* out) override;
  void Ffn(const float* x, int64_t m, const FfnWeights& w, float* y) override;
  void Experts(const float* hidden, int64_t hidden_size, const std::vector<ExpertTask>& tasks,
               float* out) override;
};

// Shared by both CPU backends: the F32 inverse frequencies of HF's default RoPE with
// partial_rotary_factor, inv_freq[j] = 1 / theta^(2j / rotary_dim), computed in F32 as torch does.
std::vector<float> RopeInverseFrequencies(int64_t rotary_dim, double theta);

// Reads element i of a weight row of `dtype` as F32.
float WeightAt(const WeightMatrix& w, int64_t row, int64_t col);

}  // namespace dmoe::model

#endif  // DMOE_MODEL_CPU_REFERENCE_KERNELS_H_
