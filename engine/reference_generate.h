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
  // ReferenceGenerateEditing only: T2T rewrites made (re-masks included), and re-masks.
  int64_t edits = 0;
  int64_t remasks = 0;
};

// Diffusion mode only (params.mode must be kDiffusion).
absl::StatusOr<ReferenceResult> ReferenceGenerate(const model::Model& model,
                                                  model::Kernels& kernels,
                                                  model::ExpertExecutor& experts,
                                                  const std::vector<int32_t>& prompt,
                                                  const GenerationParams& params);

// The official LLaDA2.1 generate() (token editing, M2T + T2T; `modeling_llada2_moe.py` of
// LLaDA2.1, MODEL-SPEC.md §4.5) transcribed literally, in reference_generate_editing.cc: no KV
// cache, the whole prefix recomputed every forward, with the block-causal attention its
// docstring describes (not the 0/1 keep-mask the file passes, which recent `transformers` adds
// to the scores as a bias: a bug). Its arguments map as threshold -> params.threshold,
// editing_threshold -> *params.edit_threshold (required), max_post_steps ->
// params.max_post_steps, num_to_transfer = 1, eos_early_stop = True with params.stop_ids as
// the EOS set (the block holding a stop token is the last one decoded, as for the LLaDA2.0
// reference; the ids are the same either way because later blocks cannot change earlier ones);
// `steps` is unused there, as in the original. The original has no bound on forwards per
// block and neither has this (params.max_block_forwards is ignored); it returns INTERNAL
// after 64 * B forwards on one block instead of hanging a test.
absl::StatusOr<ReferenceResult> ReferenceGenerateEditing(const model::Model& model,
                                                         model::Kernels& kernels,
                                                         model::ExpertExecutor& experts,
                                                         const std::vector<int32_t>& prompt,
                                                         const GenerationParams& params);

}  // namespace dmoe::engine

#endif  // DMOE_ENGINE_REFERENCE_GENERATE_H_
