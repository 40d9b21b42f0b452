// Routed-expert compute over rows that already carry their expert (one expert per row, top_k
// 1): MoeGroup sorts the rows by expert, GroupedExperts runs every expert of the layer in one
// launch. This is what an expert shard computes for a peer: `dmoe-expert --device cuda`
// (expert_service/device_experts.h) and an NCCL expert rank (MakeCudaServeFn) both use it.
// Device thread only (STYLE.md §8), like everything in model/cuda.
#ifndef DMOE_MODEL_CUDA_EXPERT_ROWS_H_
#define DMOE_MODEL_CUDA_EXPERT_ROWS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/cuda/cuda_model.h"
#include "model/cuda/device_buffer.h"

namespace dmoe::gpu {

class CudaExpertRows {
 public:
  // Scratch for `max_rows` rows of `weights`' experts, allocated on the calling (device)
  // thread. INVALID_ARGUMENT when max_rows or the model's expert count is not positive.
  static absl::StatusOr<CudaExpertRows> Create(const CudaWeights& weights, int64_t max_rows);

  int64_t max_rows() const { return max_rows_; }

  // What Enqueue refuses, checked without touching the device: INVALID_ARGUMENT for a layer
  // without routed experts on the device, RESOURCE_EXHAUSTED for n > max_rows.
  absl::Status Check(int64_t layer, int64_t n) const;

  // Enqueues on `stream`: out[i] = expert_{ids[i]}(hidden[i]) for i < n, F32 [n, H],
  // unweighted. The caller has checked every id against the experts held
  // (CudaWeights::HoldsExpert; the kernel writes NaN rows for an expert without weights).
  // n == 0 enqueues nothing. Errors as Check. Uses this object's scratch: one stream at a time.
  absl::Status Enqueue(int64_t layer, const float* hidden, const int32_t* ids, int64_t n,
                       float* out, cudaStream_t stream);

 private:
  CudaExpertRows(const CudaWeights& weights, int64_t max_rows)
      : weights_(&weights), max_rows_(max_rows) {}

  const CudaWeights* weights_;
  int64_t max_rows_;
  DeviceBuffer counts_, offsets_, sorted_, act_;
};

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_EXPERT_ROWS_H_
