#include "model/cuda/cuda_status.h"
#include "model/cuda/moe_combine.h"

namespace dmoe::gpu {
namespace {

__global__ void MoeCombineKernel(MoeCombineArgs a) {
  const int64_t t = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= a.hidden) return;
  float moe = 0.0f;
  for (int s = 0; s < a.top_k; ++s) {
    const int64_t slot = t * a.top_k + s;
    moe += a.weights[slot] * a.slot_out[slot * a.hidden + j];
  }
  const float f = moe + (a.shared != nullptr ? a.shared[t * a.hidden + j] : 0.0f);
  a.x[t * a.hidden + j] += f;
}

}  // namespace

absl::Status LaunchMoeCombine(const MoeCombineArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return absl::OkStatus();
  if (a.x == nullptr || a.slot_out == nullptr || a.weights == nullptr || a.num_tokens < 0 ||
      a.hidden <= 0 || a.top_k <= 0 || a.num_tokens > 65535) {
    return absl::InvalidArgumentError(
        "LaunchMoeCombine: null pointer or bad shape (num_tokens at most 65535)");
  }
  const dim3 grid(static_cast<unsigned>((a.hidden + 255) / 256),
                  static_cast<unsigned>(a.num_tokens));
  MoeCombineKernel<<<grid, 256, 0, stream>>>(a);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
