#include <limits>

#include "model/cuda/cuda_status.h"
#include "model/cuda/device_util.cuh"
#include "model/cuda/moe_group.h"

namespace dmoe::gpu {
namespace {

using internal::BlockSumInt;
using internal::kFullMask;

constexpr int kThreads = 256;

// Block e counts the slots routed to expert e.
__global__ void CountKernel(const int32_t* experts, int num_slots, int32_t* counts) {
  __shared__ int scratch[32];
  const int e = blockIdx.x;
  int count = 0;
  for (int s = threadIdx.x; s < num_slots; s += blockDim.x) count += experts[s] == e;
  count = BlockSumInt(count, scratch);
  if (threadIdx.x == 0) counts[e] = count;
}

// Block e computes its offset from the counts of experts < e, then writes its slots in slot
// order: per chunk of blockDim slots, a ballot per warp and a prefix over warps give each
// matching slot its rank.
__global__ void PlaceKernel(const int32_t* experts, int num_slots, int num_experts,
                            const int32_t* counts, int32_t* offsets, int32_t* sorted_slots) {
  __shared__ int scratch[32];
  __shared__ int warp_counts[kThreads / 32];
  const int e = blockIdx.x;
  int before = 0;
  for (int i = threadIdx.x; i < e; i += blockDim.x) before += counts[i];
  const int offset = BlockSumInt(before, scratch);
  if (threadIdx.x == 0) {
    offsets[e] = offset;
    if (e == num_experts - 1) offsets[num_experts] = offset + counts[e];
  }
  if (counts[e] == 0) return;  // uniform over the block
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int placed = 0;
  for (int base = 0; base < num_slots; base += blockDim.x) {
    const int s = base + threadIdx.x;
    const bool match = s < num_slots && experts[s] == e;
    const unsigned ballot = __ballot_sync(kFullMask, match);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int rank = placed;
    for (int w = 0; w < warp; ++w) rank += warp_counts[w];
    rank += __popc(ballot & ((1u << lane) - 1u));
    if (match) sorted_slots[offset + rank] = s;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) placed += warp_counts[w];
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
}

}  // namespace

absl::Status LaunchMoeGroup(const MoeGroupArgs& a, cudaStream_t stream) {
  if (a.experts == nullptr && a.num_slots > 0) {
    return absl::InvalidArgumentError("LaunchMoeGroup: null experts");
  }
  if (a.counts == nullptr || a.offsets == nullptr ||
      (a.sorted_slots == nullptr && a.num_slots > 0) || a.num_experts <= 0 || a.num_slots < 0 ||
      a.num_slots >= std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("LaunchMoeGroup: null pointer or bad shape");
  }
  const int num_slots = static_cast<int>(a.num_slots);
  CountKernel<<<a.num_experts, kThreads, 0, stream>>>(a.experts, num_slots, a.counts);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  PlaceKernel<<<a.num_experts, kThreads, 0, stream>>>(a.experts, num_slots, a.num_experts, a.counts,
                                                      a.offsets, a.sorted_slots);
  DMOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace dmoe::gpu
