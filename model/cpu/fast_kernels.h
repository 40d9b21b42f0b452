// The fast CPU backend users run: the GEMM core of gemm.h (weights streamed once in their
// stored dtype), a thread pool over output rows / heads / experts, fused loops where they pay.
#ifndef DMOE_MODEL_CPU_FAST_KERNELS_H_
#define DMOE_MODEL_CPU_FAST_KERNELS_H_

#include <memory>

#include "common/thread_pool.h"
#include "model/kernels.h"

namespace dmoe::model {

struct FastKernelsOptions {
  int num_threads = 0;  // <= 0: all hardware threads
};

// Thread-compatible: one forward at a time per instance.
class FastKernels : public Kernels {
 public:
  explicit FastKernels(const FastKernelsOptions& options);
  std::string_view name() const override { return "cpu"; }
  int num_threads() const { return pool_.num_threads(); }

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

 private:
  ThreadPool pool_;
};

}  // namespace dmoe::model

#endif  // DMOE_MODEL_CPU_FAST_KERNELS_H_
