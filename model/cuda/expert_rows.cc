#include "model/cuda/expert_rows.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/cuda/grouped_experts.h"
#include "model/cuda/moe_group.h"

namespace dmoe::gpu {

absl::StatusOr<CudaExpertRows> CudaExpertRows::Create(const CudaWeights& weights,
                                                      int64_t max_rows) {
  const model::ModelConfig& c = weights.config();
  if (max_rows <= 0 || c.num_experts <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("CudaExpertRows: max_rows (", max_rows,
                                                   ") and num_experts (", c.num_experts,
                                                   ") must be positive"));
  }
  CudaExpertRows rows(weights, max_rows);
  DMOE_ASSIGN_OR_RETURN(rows.counts_, DeviceBuffer::Allocate(c.num_experts * 4));
  DMOE_ASSIGN_OR_RETURN(rows.offsets_, DeviceBuffer::Allocate((c.num_experts + 1) * 4));
  DMOE_ASSIGN_OR_RETURN(rows.sorted_, DeviceBuffer::Allocate(max_rows * 4));
  DMOE_ASSIGN_OR_RETURN(rows.act_, DeviceBuffer::Allocate(max_rows * c.moe_intermediate_size * 4));
  return rows;
}

absl::Status CudaExpertRows::Check(int64_t layer, int64_t n) const {
  const model::ModelConfig& c = weights_->config();
  if (n > max_rows_) {
    return absl::ResourceExhaustedError(absl::StrCat(n, " rows, max ", max_rows_));
  }
  if (layer < 0 || layer >= c.num_hidden_layers || weights_->layer(layer).expert_gate == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " has no routed experts on this device"));
  }
  return absl::OkStatus();
}

absl::Status CudaExpertRows::Enqueue(int64_t layer, const float* hidden, const int32_t* ids,
                                     int64_t n, float* out, cudaStream_t stream) {
  DMOE_RETURN_IF_ERROR(Check(layer, n));
  if (n == 0) return absl::OkStatus();
  const model::ModelConfig& c = weights_->config();
  MoeGroupArgs group;
  group.experts = ids;
  group.num_slots = n;
  group.num_experts = static_cast<int32_t>(c.num_experts);
  group.counts = counts_.as<int32_t>();
  group.offsets = offsets_.as<int32_t>();
  group.sorted_slots = sorted_.as<int32_t>();
  DMOE_RETURN_IF_ERROR(LaunchMoeGroup(group, stream));
  GroupedExpertsArgs ex = LayerExpertsArgs(weights_->layer(layer), c);
  ex.hidden = hidden;
  ex.top_k = 1;  // each row is its own slot
  ex.num_slots = n;
  ex.offsets = offsets_.as<int32_t>();
  ex.sorted_slots = sorted_.as<int32_t>();
  ex.act = act_.as<float>();
  ex.slot_out = out;
  return LaunchGroupedExperts(ex, stream);
}

}  // namespace dmoe::gpu
