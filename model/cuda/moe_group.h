// Groups a MoE layer's routed slots by expert on the GPU (the device form of
// model::BuildExpertTasks): slots of expert 0 first, then expert 1, ..., and within an expert
// in slot order, so the grouped expert GEMMs read each expert's weights once and the result
// does not depend on timing (no atomics decide an order).
#ifndef DMOE_MODEL_CUDA_MOE_GROUP_H_
#define DMOE_MODEL_CUDA_MOE_GROUP_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace dmoe::gpu {

struct MoeGroupArgs {
  const int32_t* experts = nullptr;  // I32 [num_slots]: expert of slot s (s = token * k + j)
  int64_t num_slots = 0;
  int32_t num_experts = 0;          // E; slots with an id outside [0, E) are left out
  int32_t* counts = nullptr;        // I32 [E]: slots routed to each expert (may be 0)
  int32_t* offsets = nullptr;       // I32 [E + 1]: exclusive prefix sum of counts
  int32_t* sorted_slots = nullptr;  // I32 [num_slots]: [offsets[e], offsets[e+1]) are the
                                    // slots of expert e in increasing order
};

// Two launches of E blocks each (count, then place). num_slots == 0 still writes zero counts
// and offsets. INVALID_ARGUMENT for null pointers, E <= 0 or num_slots >= 2^31.
absl::Status LaunchMoeGroup(const MoeGroupArgs& args, cudaStream_t stream);

}  // namespace dmoe::gpu

#endif  // DMOE_MODEL_CUDA_MOE_GROUP_H_
