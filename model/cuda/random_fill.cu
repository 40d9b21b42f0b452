#include <algorithm>

#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/random_fill.h"

namespace dmoe::gpu {
namespace {

using internal::FromFloat;

__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <typename T>
__global__ void RandomFillKernel(T* data, int64_t count, uint64_t seed, float mean, float scale) {
  const uint64_t key = SplitMix64(seed);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = SplitMix64(key ^ static_cast<uint64_t>(i));
    // 24 random bits -> [-1, 1)
    const float u = static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
    data[i] = FromFloat<T>(mean + scale * u);
  }
}

}  // namespace

absl::Status LaunchRandomFill(const RandomFillArgs& a, cudaStream_t stream) {
  if (a.count == 0) return absl::OkStatus();
  if (a.data == nullptr || a.count < 0) {
    return absl::InvalidArgumentError("LaunchRandomFill: null pointer or bad count");
  }
  const float scale = a.std * 1.7320508f;  // uniform on [-a, a] has std a / sqrt(3)
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>(internal::CeilDiv(a.count, 256), 65536));
  switch (a.dtype) {
    case DType::kF32:
      RandomFillKernel<<<blocks, 256, 0, stream>>>(static_cast<float*>(a.data), a.count, a.seed,
                                                   a.mean, scale);
      break;
    case DType::kBF16:
      RandomFillKernel<<<blocks, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(a.data), a.count,
                                                   a.seed, a.mean, scale);
      break;
    case DType::kF16:
      RandomFillKernel<<<blocks, 256, 0, stream>>>(static_cast<__half*>(a.data), a.count, a.seed,
                                                   a.mean, scale);
      break;
    case DType::kI8:  // q8 weights run on the CPU backends (CudaModel refuses them)
      break;
  }
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
