// RMSNorm on the GPU: y[r] = weight * (x[r] * rsqrt(mean(x[r]^2) + eps)), the formula of
// ReferenceKernels::RmsNorm, over `rows` rows of width n. All pointers are device pointers.
#ifndef DMOE_MODEL_CUDA_RMS_NORM_H_
#define DMOE_MODEL_CUDA_RMS_NORM_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace dmoe::gpu {

struct RmsNormArgs {
  const float* x = nullptr;  // F32 [rows, n]
  int64_t rows = 0;
  int64_t n = 0;
  const float* weight = nullptr;  // F32 [n]
  float eps = 1e-6f;
  // y_dtype [rows, n]. May alias x when y_dtype is F32. BF16/F16 outputs feed a GEMM directly
  // (round-to-nearest-even, as F32ToBf16).
  void* y = nullptr;
  DType y_dtype = DType::kF32;
};

// One block per row; the sum of squares is reduced in a fixed order (deterministic, and
// independent of `rows`). rows == 0 is a no-op. INVALID_ARGUMENT for null pointers or n <= 0.
absl::Status LaunchRmsNorm(const RmsNormArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_RMS_NORM_H_
