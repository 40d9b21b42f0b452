#include <algorithm>
#include <climits>

#include "common/status_macros.h"
#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/lm_head.h"
#include "model/cuda/matmul.h"

namespace dmoe::gpu {
namespace {

constexpr int kThreads = 1024;

// Running (max, argmax, sum of exp(v - max)) of a set of logits.
struct Top1State {
  float max;
  int index;
  float sum;
};

__device__ __forceinline__ void Add(Top1State& s, float v, int i) {
  if (v == -INFINITY || v != v) return;  // contributes nothing (and never wins)
  if (s.index == INT_MAX || v > s.max) {
    s.sum = (s.index == INT_MAX ? 0.0f : s.sum * expf(s.max - v)) + 1.0f;
    s.max = v;
    s.index = i;
  } else {
    s.sum += expf(v - s.max);
  }
}

__device__ __forceinline__ Top1State Merge(const Top1State& a, const Top1State& b) {
  if (b.index == INT_MAX) return a;
  if (a.index == INT_MAX) return b;
  Top1State r;
  r.max = fmaxf(a.max, b.max);
  r.index = a.max > b.max ? a.index : b.max > a.max ? b.index : min(a.index, b.index);
  r.sum = a.sum * expf(a.max - r.max) + b.sum * expf(b.max - r.max);
  return r;
}

// One block per row; thread i scans elements i, i + blockDim, ... then a fixed tree merges.
__global__ void SoftmaxTop1Kernel(const float* logits, int64_t vocab, int32_t* ids,
                                  float* confidence) {
  __shared__ Top1State partial[kThreads / 32];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  Top1State s{-INFINITY, INT_MAX, 0.0f};
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) Add(s, row[v], static_cast<int>(v));
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Top1State o{__shfl_xor_sync(internal::kFullMask, s.max, offset),
                __shfl_xor_sync(internal::kFullMask, s.index, offset),
                __shfl_xor_sync(internal::kFullMask, s.sum, offset)};
    s = Merge(s, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane]
                                                 : Top1State{-INFINITY, INT_MAX, 0.0f};
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      Top1State o{__shfl_xor_sync(internal::kFullMask, s.max, offset),
                  __shfl_xor_sync(internal::kFullMask, s.index, offset),
                  __shfl_xor_sync(internal::kFullMask, s.sum, offset)};
      s = Merge(s, o);
    }
    if (lane == 0) {
      ids[blockIdx.x] = s.index == INT_MAX ? -1 : s.index;
      confidence[blockIdx.x] = s.index == INT_MAX ? 0.0f : 1.0f / s.sum;
    }
  }
}

}  // namespace

absl::Status LaunchSoftmaxTop1(const float* logits, int64_t m, int64_t vocab, int32_t* ids,
                               float* confidence, cudaStream_t stream) {
  if (m == 0) return absl::OkStatus();
  if (logits == nullptr || ids == nullptr || confidence == nullptr || m < 0 || vocab <= 0 ||
      vocab > INT_MAX) {
    return absl::InvalidArgumentError("LaunchSoftmaxTop1: null pointer or bad shape");
  }
  SoftmaxTop1Kernel<<<static_cast<unsigned>(m), kThreads, 0, stream>>>(logits, vocab, ids,
                                                                       confidence);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status LaunchLmHeadTop1(const LmHeadTop1Args& a, cudaStream_t stream) {
  if (a.m == 0) return absl::OkStatus();
  if (a.x == nullptr || a.w == nullptr || a.logits_scratch == nullptr || a.ids == nullptr ||
      a.confidence == nullptr || a.m < 0 || a.scratch_rows <= 0 || a.vocab <= 0 || a.hidden <= 0) {
    return absl::InvalidArgumentError("LaunchLmHeadTop1: null pointer or bad shape");
  }
  for (int64_t r0 = 0; r0 < a.m; r0 += a.scratch_rows) {
    const int64_t rows = std::min(a.scratch_rows, a.m - r0);
    MatMulArgs mm;
    mm.cublas = a.cublas;
    mm.x = a.x + r0 * a.hidden;
    mm.x_dtype = DType::kF32;
    mm.m = rows;
    mm.k = a.hidden;
    mm.w = a.w;
    mm.w_dtype = a.w_dtype;
    mm.n = a.vocab;
    mm.y = a.logits_scratch;
    mm.x_scratch = a.x_scratch;
    DMOE_RETURN_IF_ERROR(LaunchMatMul(mm, stream));
    DMOE_RETURN_IF_ERROR(
        LaunchSoftmaxTop1(a.logits_scratch, rows, a.vocab, a.ids + r0, a.confidence + r0, stream));
    if (a.row_logits_host == nullptr) continue;
    // Runs of rows whose host rows are adjacent: one copy each, ordered on the stream before
    // the next chunk's GEMM overwrites the scratch.
    for (int64_t r = 0; r < rows;) {
      float* dst = a.row_logits_host[r0 + r];
      if (dst == nullptr) {
        ++r;
        continue;
      }
      int64_t run = 1;
      while (r + run < rows && a.row_logits_host[r0 + r + run] == dst + run * a.vocab) ++run;
      DMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, a.logits_scratch + r * a.vocab,
                                                run * a.vocab * sizeof(float),
                                                cudaMemcpyDeviceToHost, stream));
      r += run;
    }
  }
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
