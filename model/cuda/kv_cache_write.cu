#include "model/cuda/cuda_status.h"
#include "model/cuda/kv_cache_write.h"

namespace dmoe::gpu {
namespace {

__global__ void KvCacheWriteKernel(KvCacheWriteArgs a) {
  const int i = blockIdx.x;
  const float* src = a.qkv + static_cast<int64_t>(a.rows[i]) * a.qkv_stride;
  const int64_t page_floats = a.kv.num_layers * 2 * a.kv.page_tokens * a.kv.kv_width;
  float* k_dst = a.kv_pool + static_cast<int64_t>(a.pages[i]) * page_floats +
                 a.layer * 2 * a.kv.page_tokens * a.kv.kv_width +
                 static_cast<int64_t>(a.slots[i]) * a.kv.kv_width;
  float* v_dst = k_dst + a.kv.page_tokens * a.kv.kv_width;
  for (int64_t c = threadIdx.x; c < a.kv.kv_width; c += blockDim.x) {
    k_dst[c] = src[a.k_offset + c];
    v_dst[c] = src[a.v_offset + c];
  }
}

}  // namespace

absl::Status LaunchKvCacheWrite(const KvCacheWriteArgs& a, cudaStream_t stream) {
  if (a.num_rows == 0) return absl::OkStatus();
  if (a.qkv == nullptr || a.kv_pool == nullptr || a.rows == nullptr || a.pages == nullptr ||
      a.slots == nullptr || a.num_rows < 0 || a.kv.kv_width <= 0) {
    return absl::InvalidArgumentError("LaunchKvCacheWrite: null pointer or bad shape");
  }
  KvCacheWriteKernel<<<static_cast<unsigned>(a.num_rows), 128, 0, stream>>>(a);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
