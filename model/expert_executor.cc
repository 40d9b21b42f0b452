#include "model/expert_executor.h"

#include <map>

#include "absl/strings/str_cat.h"

namespace dmoe::model {

std::vector<ExpertTask> BuildExpertTasks(const LayerWeights& layer, const Routing& routing) {
  std::map<int32_t, ExpertTask> by_expert;
  for (int64_t t = 0; t < routing.num_tokens; ++t) {
    for (int64_t s = 0; s < routing.top_k; ++s) {
      const int32_t e = routing.experts[t * routing.top_k + s];
      ExpertTask& task = by_expert[e];
      task.weights = &layer.experts[e];
      task.input_rows.push_back(static_cast<int32_t>(t));
      task.output_rows.push_back(static_cast<int32_t>(t * routing.top_k + s));
    }
  }
  std::vector<ExpertTask> tasks;
  tasks.reserve(by_expert.size());
  for (auto& [e, task] : by_expert) tasks.push_back(std::move(task));
  return tasks;
}

absl::Status LocalExpertExecutor::RunExperts(int64_t layer, const float* hidden,
                                             int64_t num_tokens, int64_t hidden_size,
                                             const Routing& routing, float* slot_out) {
  const LayerWeights& lw = weights_.layers.at(layer);
  for (int32_t e : routing.experts) {
    if (e < 0 || e >= static_cast<int32_t>(lw.experts.size()) || lw.experts[e].empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("layer ", layer, ": expert ", e, " is not loaded in this process"));
    }
  }
  kernels_.Experts(hidden, hidden_size, BuildExpertTasks(lw, routing), slot_out);
  return absl::OkStatus();
}

}  // namespace dmoe::model
