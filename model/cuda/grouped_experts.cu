#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/grouped_experts.h"

namespace dmoe::gpu {
namespace {

using internal::LoadVec16;
using internal::ToFloat;
using internal::Vec16;
using internal::WarpSum;

constexpr int kWarps = 8;
constexpr int kTokens = 8;   // input rows per pass over the weights
constexpr int kRows = 4;     // weight rows per warp (gate+up: 2 features; down: 4)
constexpr int kKTile = 512;  // input columns staged in shared memory per step

// kGateUp: act[i, f] = silu(x gate_f) * (x up_f) over K = H, features f < I.
// otherwise: slot_out[s, f] = act[i] down_f over K = I, features f < H.
template <typename W, bool kGateUp>
__global__ void __launch_bounds__(kWarps * 32) ExpertGemmKernel(GroupedExpertsArgs a) {
  constexpr int kFeaturesPerWarp = kGateUp ? kRows / 2 : kRows;
  constexpr int kV = Vec16<W>::kSize;
  __shared__ __align__(16) float xs[kTokens][kKTile];

  const int e = blockIdx.y;
  const int begin = a.offsets[e], end = a.offsets[e + 1];
  if (begin == end) return;  // expert without rows: its weights are never read
  const int64_t n_out = kGateUp ? a.intermediate_size : a.hidden_size;
  const int64_t k_in = kGateUp ? a.hidden_size : a.intermediate_size;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t f0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kFeaturesPerWarp;

  const W* rows[kRows];
  bool valid[kRows];
  bool missing = false;
  bool vec = k_in % kV == 0;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t f = f0 + r % kFeaturesPerWarp;
    const void* base = kGateUp ? (r < kFeaturesPerWarp ? a.gate[e] : a.up[e]) : a.down[e];
    missing |= base == nullptr;
    valid[r] = f < n_out && base != nullptr;
    rows[r] = valid[r] ? static_cast<const W*>(base) + f * k_in : nullptr;
    if (valid[r]) vec &= reinterpret_cast<uintptr_t>(rows[r]) % 16 == 0;
  }

  for (int chunk = begin; chunk < end; chunk += kTokens) {
    const int nt = min(kTokens, end - chunk);
    float acc[kTokens][kRows];
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[t][r] = 0.0f;
    }
    for (int64_t k0 = 0; k0 < k_in; k0 += kKTile) {
      const int kt = static_cast<int>(min(static_cast<int64_t>(kKTile), k_in - k0));
      __syncthreads();  // the previous step's xs is consumed
      for (int idx = threadIdx.x; idx < kTokens * kKTile; idx += blockDim.x) {
        const int t = idx / kKTile, c = idx % kKTile;
        float v = 0.0f;
        if (t < nt && c < kt) {
          const int i = chunk + t;
          const float* src =
              kGateUp ? a.hidden + static_cast<int64_t>(a.sorted_slots[i] / a.top_k) * a.hidden_size
                      : a.act + static_cast<int64_t>(i) * a.intermediate_size;
          v = src[k0 + c];
        }
        xs[t][c] = v;
      }
      __syncthreads();
      if (vec) {
        for (int c = lane * kV; c < kt; c += 32 * kV) {
          float w[kRows][kV];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (valid[r]) {
              LoadVec16<W>(rows[r] + k0 + c, w[r]);
            } else {
#pragma unroll
              for (int v = 0; v < kV; ++v) w[r][v] = 0.0f;
            }
          }
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            if (t < nt) {  // uniform over the block
              float x[kV];
#pragma unroll
              for (int v = 0; v < kV; v += 4) {
                const float4 x4 = *reinterpret_cast<const float4*>(&xs[t][c + v]);
                x[v] = x4.x;
                x[v + 1] = x4.y;
                x[v + 2] = x4.z;
                x[v + 3] = x4.w;
              }
#pragma unroll
              for (int r = 0; r < kRows; ++r) {
#pragma unroll
                for (int v = 0; v < kV; ++v) acc[t][r] += w[r][v] * x[v];
              }
            }
          }
        }
      } else {
        for (int c = lane; c < kt; c += 32) {
          float w[kRows];
#pragma unroll
          for (int r = 0; r < kRows; ++r) w[r] = valid[r] ? ToFloat<W>(rows[r][k0 + c]) : 0.0f;
#pragma unroll
          for (int t = 0; t < kTokens; ++t) {
            if (t < nt) {
              const float x = xs[t][c];
#pragma unroll
              for (int r = 0; r < kRows; ++r) acc[t][r] += w[r] * x;
            }
          }
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      if (t >= nt) continue;
      const int i = chunk + t;
      float sums[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) sums[r] = WarpSum(acc[t][r]);
      if (lane != 0) continue;
#pragma unroll
      for (int j = 0; j < kFeaturesPerWarp; ++j) {
        const int64_t f = f0 + j;
        if (f >= n_out) continue;
        float y;
        if (missing) {
          y = __int_as_float(0x7fc00000);  // NaN: rows were routed to an expert not held here
        } else if (kGateUp) {
          const float g = sums[j], u = sums[j + kFeaturesPerWarp];
          y = g / (1.0f + expf(-g)) * u;
        } else {
          y = sums[j];
        }
        if (kGateUp) {
          a.act[static_cast<int64_t>(i) * a.intermediate_size + f] = y;
        } else {
          a.slot_out[static_cast<int64_t>(a.sorted_slots[i]) * a.hidden_size + f] = y;
        }
      }
    }
  }
}

template <typename W>
absl::Status Launch(const GroupedExpertsArgs& a, cudaStream_t stream) {
  const int gate_up_features = kWarps * (kRows / 2);
  const int down_features = kWarps * kRows;
  const dim3 grid_gate_up(
      static_cast<unsigned>(internal::CeilDiv(a.intermediate_size, gate_up_features)),
      static_cast<unsigned>(a.num_experts));
  ExpertGemmKernel<W, true><<<grid_gate_up, kWarps * 32, 0, stream>>>(a);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const dim3 grid_down(static_cast<unsigned>(internal::CeilDiv(a.hidden_size, down_features)),
                       static_cast<unsigned>(a.num_experts));
  ExpertGemmKernel<W, false><<<grid_down, kWarps * 32, 0, stream>>>(a);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchGroupedExperts(const GroupedExpertsArgs& a, cudaStream_t stream) {
  if (a.num_slots == 0) return absl::OkStatus();
  if (a.hidden == nullptr || a.offsets == nullptr || a.sorted_slots == nullptr ||
      a.gate == nullptr || a.up == nullptr || a.down == nullptr || a.act == nullptr ||
      a.slot_out == nullptr) {
    return absl::InvalidArgumentError("LaunchGroupedExperts: null pointer");
  }
  // num_experts is the grid's y dimension (at most 65535).
  if (a.hidden_size <= 0 || a.intermediate_size <= 0 || a.top_k <= 0 || a.num_experts <= 0 ||
      a.num_experts > 65535 || a.num_slots < 0) {
    return absl::InvalidArgumentError("LaunchGroupedExperts: bad shape");
  }
  switch (a.weight_dtype) {
    case DType::kF32:
      return Launch<float>(a, stream);
    case DType::kBF16:
      return Launch<__nv_bfloat16>(a, stream);
    case DType::kF16:
      return Launch<__half>(a, stream);
    case DType::kI8:  // q8 weights run on the CPU backends (CudaModel refuses them)
      break;
  }
  return absl::InvalidArgumentError("LaunchGroupedExperts: unknown dtype");
}

}  // namespace dmoe::gpu
