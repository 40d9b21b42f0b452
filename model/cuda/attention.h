// Block attention on the GPU: every query row of a segment attends to its sequence's cached
// prefix (paged KV pool) plus the segment's own K/V rows, under the block-causal mask of
// MODEL-SPEC.md §4.2 (key j visible to query i iff j / block <= pos_i / block; inside a
// block there is no mask). Flash-style: keys stream through shared memory in tiles with an
// online softmax, so no score matrix is materialised, however long the prefix.
//
// Positions are implicit: segment s covers positions [seg_start[s], seg_start[s] + n_s), its
// keys are positions [0, seg_start[s] + n_s) in order: [0, seg_start[s]) from the pages, the
// rest from the segment's own rows of `qkv`. This is the layout Model::Forward builds.
#ifndef DMOE_MODEL_CUDA_ATTENTION_H_
#define DMOE_MODEL_CUDA_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "model/cuda/kv_layout.h"

namespace dmoe::gpu {

struct AttentionArgs {
  // F32 [num_rows, qkv_stride]: per row Q heads [0, Nq*D), K heads [Nq*D, (Nq+Nkv)*D), V heads
  // [(Nq+Nkv)*D, (Nq+2Nkv)*D), after QK-norm and RoPE.
  const float* qkv = nullptr;
  int64_t qkv_stride = 0;
  float* out = nullptr;  // F32 [num_rows, out_stride]; head h at [h * D]
  int64_t out_stride = 0;
  int32_t num_segments = 0;
  const int32_t* seg_row_begin = nullptr;  // I32 [num_segments + 1]: rows of segment s
  const int32_t* seg_start = nullptr;      // I32 [num_segments]: cached prefix length
  const int32_t* seg_block = nullptr;      // I32 [num_segments]: block-causal granularity (>= 1)
  // I32 [num_segments, max_pages_per_segment]: page ids holding the prefix; page p of the
  // table covers positions [p * page_tokens, (p + 1) * page_tokens). May be null when every
  // seg_start is 0.
  const int32_t* page_table = nullptr;
  int32_t max_pages_per_segment = 0;
  const float* kv_pool = nullptr;  // F32, KvPoolLayout
  KvPoolLayout kv;
  int64_t layer = 0;
  int32_t max_segment_rows = 0;  // max over segments of n_s (sizes the grid)
  int32_t num_heads = 0;         // Nq, a multiple of Nkv
  int32_t num_kv_heads = 0;      // Nkv
  int32_t head_dim = 0;          // D, at most 128
  float scale = 1.0f;            // 1 / sqrt(D)
};

// Enqueues the attention on `stream`. Output rows of every segment are written; nothing else.
// num_segments == 0 is a no-op. INVALID_ARGUMENT for null pointers, D > 128, or a group size
// Nq / Nkv above 16.
absl::Status LaunchAttention(const AttentionArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_ATTENTION_H_
