// Dense GEMM on the GPU through cuBLAS: y[m, n] (+)= x[m, k] @ W[n, k]^T with F32 accumulation,
// the formula of ReferenceKernels::MatMul. W is in PyTorch nn.Linear layout ([out, in]).
//
// Activations. The residual stream and every op's output are F32. cuBLAS has no GEMM with a
// BF16 A and an F32 B, so for BF16/F16 weights the activations are rounded to the weight's
// dtype first (the launcher does it into `x_scratch`, or the producer writes x in that dtype
// directly, e.g. LaunchRmsNorm with y_dtype BF16). This is the one place the CUDA backend
// rounds an activation; the CPU backends multiply F32 activations by widened weights. F32
// weights use an F32 GEMM (CUBLAS_COMPUTE_32F; no TF32 unless the handle's math mode allows it).
#ifndef DMOE_MODEL_CUDA_MATMUL_H_
#define DMOE_MODEL_CUDA_MATMUL_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

struct cublasContext;  // cublasHandle_t is cublasContext* (cublas_api.h)

namespace dmoe::gpu {

struct MatMulArgs {
  cublasContext* cublas = nullptr;  // the launcher binds it to `stream`
  const void* x = nullptr;          // x_dtype [m, k], row-major, contiguous
  DType x_dtype = DType::kF32;      // F32, or the weight's dtype
  int64_t m = 0;
  int64_t k = 0;
  const void* w = nullptr;  // w_dtype [n, k]
  DType w_dtype = DType::kBF16;
  int64_t n = 0;
  float* y = nullptr;       // F32 [m, n]
  bool accumulate = false;  // true: y += x W^T (fused residual add)
  // w_dtype [m, k]: needed when x_dtype is F32 and w_dtype is not (x is rounded into it);
  // may be null otherwise.
  void* x_scratch = nullptr;
};

// Enqueues the GEMM (and the rounding of x, when needed) on `stream`. m == 0 is a no-op.
// INVALID_ARGUMENT: null pointers, shapes outside [1, 2^31), an x_dtype that is neither F32
// nor w_dtype, or a missing x_scratch. cuBLAS errors as CublasErrorToStatus.
absl::Status LaunchMatMul(const MatMulArgs& args, cudaStream_t stream);

// Rounds F32 [count] to `dtype` (RNE) into `out`; the helper LaunchMatMul uses, exposed for
// producers that want to write GEMM inputs themselves. count == 0 is a no-op.
absl::Status LaunchConvertFromF32(const float* in, int64_t count, DType dtype, void* out,
                                  cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_MATMUL_H_
