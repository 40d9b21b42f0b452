#include "serve/local_step_executor.h"

namespace dmoe::serve {

absl::StatusOr<std::vector<engine::Proposal>> LocalStepExecutor::Execute(
    const std::vector<scheduler::SequenceStep>& steps) {
  std::vector<attention::SegmentRequest> segments;
  segments.reserve(steps.size());
  for (const scheduler::SequenceStep& s : steps) segments.push_back({s.sequence_id, s.plan, s.reset_cache});
  auto proposals = engine_.Step(segments);
  if (!proposals.ok() && proposals.status().code() == absl::StatusCode::kFailedPrecondition) {
    return absl::AbortedError(proposals.status().message());
  }
  return proposals;
}

void LocalStepExecutor::Release(const std::vector<std::string>& sequence_ids) {
  engine_.Release(sequence_ids);
}

int64_t LocalStepExecutor::KvPagesCapacity() { return engine_.Info().kv_pages_total; }

}  // namespace dmoe::serve
