#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/embedding.h"

namespace dmoe::gpu {
namespace {

using internal::ToFloat;

template <typename T>
__global__ void EmbeddingKernel(const int32_t* ids, const T* table, int64_t vocab_size,
                                int64_t hidden, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  float* row = out + t * hidden;
  if (id < 0 || id >= vocab_size) {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) row[i] = __int_as_float(0x7fc00000);
    return;
  }
  const T* src = table + static_cast<int64_t>(id) * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) row[i] = ToFloat<T>(src[i]);
}

}  // namespace

absl::Status LaunchEmbedding(const EmbeddingArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return absl::OkStatus();
  if (a.ids == nullptr || a.table == nullptr || a.out == nullptr || a.num_tokens < 0 ||
      a.hidden <= 0 || a.vocab_size <= 0) {
    return absl::InvalidArgumentError("LaunchEmbedding: null pointer or bad shape");
  }
  const dim3 grid(static_cast<unsigned>(a.num_tokens));
  const dim3 block(256);
  switch (a.table_dtype) {
    case DType::kF32:
      EmbeddingKernel<<<grid, block, 0, stream>>>(a.ids, static_cast<const float*>(a.table),
                                                  a.vocab_size, a.hidden, a.out);
      break;
    case DType::kBF16:
      EmbeddingKernel<<<grid, block, 0, stream>>>(a.ids, static_cast<const __nv_bfloat16*>(a.table),
                                                  a.vocab_size, a.hidden, a.out);
      break;
    case DType::kF16:
      EmbeddingKernel<<<grid, block, 0, stream>>>(a.ids, static_cast<const __half*>(a.table),
                                                  a.vocab_size, a.hidden, a.out);
      break;
    default:
      return absl::InvalidArgumentError("LaunchEmbedding: unsupported table dtype");
    case DType::kI8:  // q8 weights run on the CPU backends (CudaModel refuses them)
      break;
  }
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
