// The official LLaDA2.0 generate() (MODEL-SPEC.md §4.3) transcribed literally: no KV cache,
// the whole prefix x[0:end] recomputed with the block-causal mask at every step. Slow on
// purpose; it is the oracle the KV-cached Sequence/Engine is tested against.
#ifndef DMOE_ENGINE_REFERENCE_GENERATE_H_
#define DMOE_ENGINE_REFERENCE_GENERATE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/sequence.h"
#include "model/expert_executor.h"
#include "model/kernels.h"
#include "model/model.h"

namespace dmoe::engine {

struct ReferenceResult {
  std::vector<int32_t> ids;  // x[P : P + gen_length], truncated after the first stop token
  // Per id: log-softmax over the full vocabulary of the logits row that committed it, computed
  // directly in double (equals Sequence::FinalLogprobs() when sampling is plain greedy).
  std::vector<float> logprobs;
  int64_t forwards = 0;
};

// Diffusion mode only (params.mode must be kDiffusion).
absl::StatusOr<ReferenceResult> ReferenceGenerate(const model::Model& model,
                                                  model::Kernels& kernels,
                                                  model::ExpertExecutor& experts,
                                                  const std::vector<int32_t>& prompt,
                                                  const GenerationParams& params);

}  // namespace dmoe::engine

#endif  // DMOE_ENGINE_REFERENCE_GENERATE_H_
