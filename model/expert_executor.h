// Where a MoE layer's routed experts run. The forward pass routes tokens and hands them to an
// ExpertExecutor; LocalExpertExecutor runs them in this process, the cluster's executor
// dispatches them to expert shards over an ExpertTransport (transport/).
#ifndef DMOE_MODEL_EXPERT_EXECUTOR_H_
#define DMOE_MODEL_EXPERT_EXECUTOR_H_

#include <cstdint>

#include "absl/status/status.h"
#include "model/kernels.h"
#include "model/moe_routing.h"
#include "model/weights.h"

namespace dmoe::model {

class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  // hidden: [num_tokens, hidden_size] (post-attention-norm activations).
  // slot_out: [num_tokens * top_k, hidden_size]; row t*top_k+s receives the UNWEIGHTED output
  // of expert routing.experts[t*top_k+s] on token t. The caller combines slots in slot order,
  // so the result does not depend on how experts are sharded.
  virtual absl::Status RunExperts(int64_t layer, const float* hidden, int64_t num_tokens,
                                  int64_t hidden_size, const Routing& routing,
                                  float* slot_out) = 0;
};

// Groups a layer's routed slots by expert: one task per expert that received tokens, in
// expert-id order. Shared by every executor (local, and the expert service).
std::vector<ExpertTask> BuildExpertTasks(const LayerWeights& layer, const Routing& routing);

// Runs experts on this process's weights with the given kernels. Thread-compatible.
class LocalExpertExecutor : public ExpertExecutor {
 public:
  LocalExpertExecutor(const ModelWeights& weights, Kernels& kernels)
      : weights_(weights), kernels_(kernels) {}
  absl::Status RunExperts(int64_t layer, const float* hidden, int64_t num_tokens,
                          int64_t hidden_size, const Routing& routing, float* slot_out) override;

 private:
  const ModelWeights& weights_;
  Kernels& kernels_;
};

}  // namespace dmoe::model

#endif  // DMOE_MODEL_EXPERT_EXECUTOR_H_
