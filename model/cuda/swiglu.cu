#include <algorithm>

#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/swiglu.h"

namespace dmoe::gpu {
namespace {

using internal::FromFloat;

template <typename T>
__global__ void SwiGluKernel(const float* gate, const float* up, int64_t count, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = FromFloat<T>(g / (1.0f + expf(-g)) * up[i]);
  }
}

}  // namespace

absl::Status LaunchSwiGlu(const SwiGluArgs& a, cudaStream_t stream) {
  if (a.count == 0) return absl::OkStatus();
  if (a.gate == nullptr || a.up == nullptr || a.out == nullptr || a.count < 0) {
    return absl::InvalidArgumentError("LaunchSwiGlu: null pointer or bad count");
  }
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>(internal::CeilDiv(a.count, 256), 4096));
  switch (a.out_dtype) {
    case DType::kF32:
      SwiGluKernel<<<blocks, 256, 0, stream>>>(a.gate, a.up, a.count, static_cast<float*>(a.out));
      break;
    case DType::kBF16:
      SwiGluKernel<<<blocks, 256, 0, stream>>>(a.gate, a.up, a.count,
                                               static_cast<__nv_bfloat16*>(a.out));
      break;
    case DType::kF16:
      SwiGluKernel<<<blocks, 256, 0, stream>>>(a.gate, a.up, a.count, static_cast<__half*>(a.out));
      break;
    case DType::kI8:  // q8 weights run on the CPU backends (CudaModel refuses them)
      break;
  }
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
