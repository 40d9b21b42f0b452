#include <cublas_v2.h>

#include <limits>

#include "common/status_macros.h"
#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/matmul.h"

namespace dmoe::gpu {
namespace {

using internal::FromFloat;

template <typename T>
__global__ void ConvertKernel(const float* in, int64_t count, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = FromFloat<T>(in[i]);
  }
}

cudaDataType_t CudaDataType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kI8:  // q8 weights run on the CPU backends (CudaModel refuses them)
      break;
  }
  return CUDA_R_32F;
}

bool FitsInt(int64_t v) { return v > 0 && v <= std::numeric_limits<int>::max(); }

}  // namespace

absl::Status LaunchConvertFromF32(const float* in, int64_t count, DType dtype, void* out,
                                  cudaStream_t stream) {
  if (count == 0) return absl::OkStatus();
  if (in == nullptr || out == nullptr || count < 0) {
    return absl::InvalidArgumentError("LaunchConvertFromF32: null pointer or bad count");
  }
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>(internal::CeilDiv(count, 256), 4096));
  switch (dtype) {
    case DType::kF32:
      DMOE_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(out, in, count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
      return absl::OkStatus();
    case DType::kBF16:
      ConvertKernel<<<blocks, 256, 0, stream>>>(in, count, static_cast<__nv_bfloat16*>(out));
      break;
    case DType::kF16:
      ConvertKernel<<<blocks, 256, 0, stream>>>(in, count, static_cast<__half*>(out));
      break;
    case DType::kI8:  // q8 weights run on the CPU backends (CudaModel refuses them)
      break;
  }
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchMatMul(const MatMulArgs& a, cudaStream_t stream) {
  if (a.m == 0) return absl::OkStatus();
  if (a.cublas == nullptr || a.x == nullptr || a.w == nullptr || a.y == nullptr) {
    return absl::InvalidArgumentError("LaunchMatMul: null pointer");
  }
  if (!FitsInt(a.m) || !FitsInt(a.n) || !FitsInt(a.k)) {
    return absl::InvalidArgumentError("LaunchMatMul: m, n, k must be in [1, 2^31)");
  }
  const void* x = a.x;
  if (a.x_dtype != a.w_dtype) {
    if (a.x_dtype != DType::kF32) {
      return absl::InvalidArgumentError("LaunchMatMul: x must be F32 or in the weight's dtype");
    }
    if (a.x_scratch == nullptr) {
      return absl::InvalidArgumentError("LaunchMatMul: F32 x with 16-bit weights needs x_scratch");
    }
    DMOE_RETURN_IF_ERROR(LaunchConvertFromF32(static_cast<const float*>(a.x), a.m * a.k, a.w_dtype,
                                              a.x_scratch, stream));
    x = a.x_scratch;
  }
  cublasHandle_t handle = a.cublas;
  DMOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle, stream));
  const float alpha = 1.0f, beta = a.accumulate ? 1.0f : 0.0f;
  const int m = static_cast<int>(a.m), n = static_cast<int>(a.n), k = static_cast<int>(a.k);
  const cudaDataType_t type = CudaDataType(a.w_dtype);
  // Row-major y[m, n] is column-major y^T[n, m] = op(W) x^T: W read column-major is [k, n]
  // (ld k), hence CUBLAS_OP_T; x read column-major is [k, m] (ld k).
  DMOE_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, a.w,
                                           type, k, x, type, k, &beta, a.y, CUDA_R_32F, n,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
