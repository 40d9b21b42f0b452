// Every routed expert of a MoE layer in two launches (the device form of Kernels::Experts):
// for each expert e and each slot s grouped under it (LaunchMoeGroup),
//   act[i]     = silu(x_s @ gate_e^T) * (x_s @ up_e^T)          (F32 [I], i = grouped row)
//   slot_out[s] = act[i] @ down_e^T                              (F32 [H], unweighted)
// where x_s = hidden[s / top_k]. The caller combines slot_out in slot order (LaunchMoeCombine,
// the ExpertExecutor contract), so the result does not depend on how experts are sharded.
//
// Kernel choice: a skinny grouped GEMM of our own, not cuBLAS grouped GEMM. A 32-token block
// routes ~1.6 rows to each touched expert, so every expert GEMM is a few rows against a
// weight matrix: memory-bound, and the only cost that matters is reading each touched
// expert's weights once. One block per (expert, tile of output features) reads its weight
// rows exactly once per 8 rows of input (16-byte vector loads, F32 accumulation); blocks of
// experts with no rows exit before touching weights. The per-expert row counts never leave
// the GPU (cublasGemmGroupedBatchedEx takes them on the host, which would cost a
// device-to-host sync per layer). Activations stay F32 (no rounding to BF16), and each
// output's reduction order depends only on the shapes, not on the number of rows.
#ifndef DMOE_MODEL_CUDA_GROUPED_EXPERTS_H_
#define DMOE_MODEL_CUDA_GROUPED_EXPERTS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace dmoe::gpu {

struct GroupedExpertsArgs {
  const float* hidden = nullptr;  // F32 [num_slots / top_k, H]
  int64_t hidden_size = 0;        // H
  int64_t intermediate_size = 0;  // I
  int32_t top_k = 1;              // slot s reads hidden row s / top_k (1: one row per slot)
  int64_t num_slots = 0;
  int32_t num_experts = 0;                // E
  const int32_t* offsets = nullptr;       // I32 [E + 1] from LaunchMoeGroup
  const int32_t* sorted_slots = nullptr;  // I32 [num_slots] from LaunchMoeGroup
  // Device arrays [E] of device pointers: gate/up weight_dtype [I, H], down [H, I]. Null for
  // experts this process does not hold; such an expert must receive no slot (its rows would
  // be NaN).
  const void* const* gate = nullptr;
  const void* const* up = nullptr;
  const void* const* down = nullptr;
  DType weight_dtype = DType::kBF16;
  float* act = nullptr;       // F32 [num_slots, I] scratch (grouped order)
  float* slot_out = nullptr;  // F32 [num_slots, H]; only routed slots are written
};

// Enqueues both launches on `stream`. num_slots == 0 is a no-op. INVALID_ARGUMENT for null
// pointers or non-positive sizes.
absl::Status LaunchGroupedExperts(const GroupedExpertsArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_GROUPED_EXPERTS_H_
