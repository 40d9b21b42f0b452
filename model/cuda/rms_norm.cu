#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/rms_norm.h"

namespace dmoe::gpu {
namespace {

using internal::BlockSum;
using internal::FromFloat;

constexpr int kThreads = 256;

template <typename Y>
__global__ void RmsNormKernel(const float* x, int64_t n, const float* weight, float eps, Y* y) {
  __shared__ float scratch[32];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * n;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += row[i] * row[i];
  sum = BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(n) + eps);
  // Each thread reads and writes only its own elements, so y may alias x.
  Y* out = y + static_cast<int64_t>(blockIdx.x) * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    out[i] = FromFloat<Y>(weight[i] * (row[i] * inv));
}

}  // namespace

absl::Status LaunchRmsNorm(const RmsNormArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return absl::OkStatus();
  if (a.x == nullptr || a.weight == nullptr || a.y == nullptr || a.rows < 0 || a.n <= 0) {
    return absl::InvalidArgumentError("LaunchRmsNorm: null pointer or bad shape");
  }
  const dim3 grid(static_cast<unsigned>(a.rows));
  switch (a.y_dtype) {
    case DType::kF32:
      RmsNormKernel<<<grid, kThreads, 0, stream>>>(a.x, a.n, a.weight, a.eps,
                                                   static_cast<float*>(a.y));
      break;
    case DType::kBF16:
      RmsNormKernel<<<grid, kThreads, 0, stream>>>(a.x, a.n, a.weight, a.eps,
                                                   static_cast<__nv_bfloat16*>(a.y));
      break;
    case DType::kF16:
      RmsNormKernel<<<grid, kThreads, 0, stream>>>(a.x, a.n, a.weight, a.eps,
                                                   static_cast<__half*>(a.y));
      break;
    default:
      return absl::InvalidArgumentError("LaunchRmsNorm: unsupported output dtype");
    case DType::kI8:  // q8 weights run on the CPU backends (CudaModel refuses them)
      break;
  }
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
