#include "expert_service/in_process_expert_transport.h"

#include "absl/strings/str_cat.h"

namespace dmoe::expert {

absl::Status InProcessExpertTransport::RunExperts(const transport::ExpertRows& rows, absl::Time deadline,
                                                  float* out) {
  ExpertRequest request;
  request.request_id = rows.request_id;
  request.step = rows.step;
  request.layer = rows.layer;
  request.placement_version = rows.placement_version;
  request.hidden = {.dtype = WireDType::kF32,
                    .shape = {rows.num_rows, rows.hidden_size},
                    .data = rows.hidden,
                    .size_bytes = static_cast<size_t>(rows.num_rows * rows.hidden_size) *
                                  sizeof(float)};
  request.expert_ids = {.dtype = WireDType::kI32,
                        .shape = {rows.num_rows},
                        .data = rows.expert_ids,
                        .size_bytes = static_cast<size_t>(rows.num_rows) * sizeof(int32_t)};
  absl::Status status = engine_.Run(request, deadline, out);
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(address_, ": ", status.message()));
}

absl::StatusOr<transport::ShardInfo> InProcessExpertTransport::GetShardInfo(absl::Time /*deadline*/) {
  return engine_.info();
}

}  // namespace dmoe::expert
