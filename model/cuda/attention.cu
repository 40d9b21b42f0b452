#include "model/cuda/attention.h"
#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"

namespace dmoe::gpu {
namespace {

using internal::kFullMask;
using internal::WarpMax;
using internal::WarpSum;

constexpr int kKeyTile = 32;      // keys per shared-memory tile (one per lane for the scores)
constexpr int kMaxHeadDim = 128;  // 4 accumulators per lane
constexpr int kMaxWarps = 16;
constexpr int kAccPerLane = kMaxHeadDim / 32;

// One block per (query tile, segment, KV head). Warp w handles query row w / group of the tile
// and Q head kv_head * group + w % group, so the K/V tile in shared memory serves every Q head
// of the GQA group and every row of the query tile. Online softmax (running max m, running
// sum l, rescaled accumulator), as in FlashAttention.
__global__ void AttentionKernel(AttentionArgs a, int rows_per_tile) {
  extern __shared__ float smem[];
  const int d = a.head_dim;
  float* k_tile = smem;                         // [kKeyTile][d + 1] (padded: no conflicts)
  float* v_tile = k_tile + kKeyTile * (d + 1);  // [kKeyTile][d]
  float* q_rows = v_tile + kKeyTile * d;        // [warps][d]

  const int s = blockIdx.y, kv_head = blockIdx.z;
  const int row_begin = a.seg_row_begin[s];
  const int n = a.seg_row_begin[s + 1] - row_begin;
  const int tile_first = blockIdx.x * rows_per_tile;
  if (tile_first >= n) return;  // uniform over the block
  const int start = a.seg_start[s], block = a.seg_block[s];
  const int group = a.num_heads / a.num_kv_heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = tile_first + warp / group;
  const int q_head = kv_head * group + warp % group;
  const bool active = r < n;
  const int64_t q_width = static_cast<int64_t>(a.num_heads) * d;
  const int64_t kv_width = static_cast<int64_t>(a.num_kv_heads) * d;

  // Keys any row of this tile can see: up to the end of the last row's block, within the
  // segment.
  const int last_pos = start + min(tile_first + rows_per_tile, n) - 1;
  const int kv_len = min(start + n, (last_pos / block + 1) * block);
  const int q_limit = active ? ((start + r) / block + 1) * block : 0;

  float* q = q_rows + warp * d;
  if (active) {
    const float* src = a.qkv + static_cast<int64_t>(row_begin + r) * a.qkv_stride + q_head * d;
    for (int c = lane; c < d; c += 32) q[c] = src[c];
  }
  float acc[kAccPerLane];
#pragma unroll
  for (int i = 0; i < kAccPerLane; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  const int64_t page_floats = a.kv.num_layers * 2 * a.kv.page_tokens * a.kv.kv_width;
  const int64_t layer_offset = a.layer * 2 * a.kv.page_tokens * a.kv.kv_width;
  const int64_t v_offset = a.kv.page_tokens * a.kv.kv_width;

  for (int t0 = 0; t0 < kv_len; t0 += kKeyTile) {
    __syncthreads();  // previous tile fully consumed (and q rows written, on the first pass)
    for (int idx = threadIdx.x; idx < kKeyTile * d; idx += blockDim.x) {
      const int j = idx / d, c = idx % d;
      const int key = t0 + j;
      float k_val = 0.0f, v_val = 0.0f;
      if (key < kv_len) {
        if (key < start) {
          const int32_t page = a.page_table[static_cast<int64_t>(s) * a.max_pages_per_segment +
                                            key / a.kv.page_tokens];
          const float* base = a.kv_pool + page * page_floats + layer_offset +
                              (key % a.kv.page_tokens) * a.kv.kv_width + kv_head * d + c;
          k_val = base[0];
          v_val = base[v_offset];
        } else {
          const float* row = a.qkv + static_cast<int64_t>(row_begin + key - start) * a.qkv_stride;
          k_val = row[q_width + kv_head * d + c];
          v_val = row[q_width + kv_width + kv_head * d + c];
        }
      }
      k_tile[j * (d + 1) + c] = k_val;
      v_tile[j * d + c] = v_val;
    }
    __syncthreads();
    if (!active) continue;  // uniform over the warp

    // Lane j scores key t0 + j.
    const int key = t0 + lane;
    float score = -INFINITY;
    if (key < kv_len && key < q_limit) {
      const float* k_row = k_tile + lane * (d + 1);
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot += q[c] * k_row[c];
      score = dot * a.scale;
    }
    const float m_new = fmaxf(m, WarpMax(score));
    if (m_new == -INFINITY) continue;     // nothing visible yet (uniform over the warp)
    const float alpha = expf(m - m_new);  // 0 on the first visible tile (m = -inf)
    const float p = score == -INFINITY ? 0.0f : expf(score - m_new);
    l = l * alpha + WarpSum(p);
#pragma unroll
    for (int i = 0; i < kAccPerLane; ++i) acc[i] *= alpha;
    for (int j = 0; j < kKeyTile; ++j) {
      const float pj = __shfl_sync(kFullMask, p, j);
      if (pj == 0.0f) continue;  // uniform: pj is the same in every lane
      const float* v_row = v_tile + j * d;
#pragma unroll
      for (int i = 0; i < kAccPerLane; ++i) {
        const int c = lane + 32 * i;
        if (c < d) acc[i] += pj * v_row[c];
      }
    }
    m = m_new;
  }
  if (!active) return;
  float* out = a.out + static_cast<int64_t>(row_begin + r) * a.out_stride + q_head * d;
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < kAccPerLane; ++i) {
    const int c = lane + 32 * i;
    if (c < d) out[c] = acc[i] * inv_l;
  }
}

}  // namespace

absl::Status LaunchAttention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_segments == 0 || a.max_segment_rows == 0) return absl::OkStatus();
  if (a.qkv == nullptr || a.out == nullptr || a.seg_row_begin == nullptr ||
      a.seg_start == nullptr || a.seg_block == nullptr || a.num_segments < 0 ||
      a.max_segment_rows < 0) {
    return absl::InvalidArgumentError("LaunchAttention: null pointer or bad segment count");
  }
  if (a.head_dim <= 0 || a.head_dim > kMaxHeadDim || a.num_kv_heads <= 0 ||
      a.num_heads <= 0 || a.num_heads % a.num_kv_heads != 0 ||
      a.num_heads / a.num_kv_heads > kMaxWarps) {
    return absl::InvalidArgumentError(
        "LaunchAttention: needs head_dim <= 128 and num_heads / num_kv_heads in [1, 16]");
  }
  const int group = a.num_heads / a.num_kv_heads;
  const int rows_per_tile = kMaxWarps / group;
  const int warps = rows_per_tile * group;
  const size_t smem = sizeof(float) * (static_cast<size_t>(kKeyTile) * (a.head_dim + 1) +
                                       static_cast<size_t>(kKeyTile) * a.head_dim +
                                       static_cast<size_t>(warps) * a.head_dim);
  const dim3 grid(static_cast<unsigned>(internal::CeilDiv(a.max_segment_rows, rows_per_tile)),
                  static_cast<unsigned>(a.num_segments), static_cast<unsigned>(a.num_kv_heads));
  AttentionKernel<<<grid, warps * 32, smem, stream>>>(a, rows_per_tile);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
