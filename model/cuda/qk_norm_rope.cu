#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/qk_norm_rope.h"

namespace dmoe::gpu {
namespace {

using internal::WarpSum;

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxHeadDim = 256;

__global__ void QkNormRopeKernel(float* qkv, int64_t m, int64_t row_stride,
                                 const int32_t* positions, int num_heads, int num_kv_heads,
                                 int head_dim, int rotary_dim, const float* q_norm,
                                 const float* k_norm, float eps, const float* inv_freq) {
  __shared__ float buffer[kWarpsPerBlock][kMaxHeadDim];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int heads = num_heads + num_kv_heads;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (item >= m * heads) return;  // whole warps exit; no block-wide barrier below
  const int64_t row = item / heads;
  const int head = static_cast<int>(item % heads);
  float* x = qkv + row * row_stride + static_cast<int64_t>(head) * head_dim;
  const float* norm = head < num_heads ? q_norm : k_norm;
  float* buf = buffer[warp];

  if (norm != nullptr) {
    float sum = 0.0f;
    for (int c = lane; c < head_dim; c += 32) sum += x[c] * x[c];
    sum = WarpSum(sum);
    const float inv = 1.0f / sqrtf(sum / static_cast<float>(head_dim) + eps);
    for (int c = lane; c < head_dim; c += 32) buf[c] = norm[c] * (x[c] * inv);
  } else {
    for (int c = lane; c < head_dim; c += 32) buf[c] = x[c];
  }
  __syncwarp();
  const int half = rotary_dim / 2;
  const float pos = static_cast<float>(positions[row]);
  for (int i = lane; i < half; i += 32) {
    const float angle = pos * inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    const float x1 = buf[i], x2 = buf[i + half];
    x[i] = x1 * c - x2 * s;
    x[i + half] = x2 * c + x1 * s;
  }
  for (int c = rotary_dim + lane; c < head_dim; c += 32) x[c] = buf[c];
}

}  // namespace

absl::Status LaunchQkNormRope(const QkNormRopeArgs& a, cudaStream_t stream) {
  if (a.m == 0) return absl::OkStatus();
  if (a.qkv == nullptr || a.positions == nullptr || a.m < 0 || a.num_heads <= 0 ||
      a.num_kv_heads <= 0 || a.head_dim <= 0 || a.head_dim > kMaxHeadDim || a.rotary_dim < 0 ||
      a.rotary_dim % 2 != 0 || a.rotary_dim > a.head_dim ||
      (a.rotary_dim > 0 && a.inv_freq == nullptr) ||
      a.row_stride < (a.num_heads + a.num_kv_heads) * a.head_dim) {
    return absl::InvalidArgumentError("LaunchQkNormRope: null pointer or bad shape");
  }
  const int64_t items = a.m * (a.num_heads + a.num_kv_heads);
  const dim3 grid(static_cast<unsigned>(internal::CeilDiv(items, kWarpsPerBlock)));
  QkNormRopeKernel<<<grid, kWarpsPerBlock * 32, 0, stream>>>(
      a.qkv, a.m, a.row_stride, a.positions, static_cast<int>(a.num_heads),
      static_cast<int>(a.num_kv_heads), static_cast<int>(a.head_dim),
      static_cast<int>(a.rotary_dim), a.q_norm, a.k_norm, a.eps, a.inv_freq);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
