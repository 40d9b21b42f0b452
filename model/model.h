// The LLaDA2.0 / Ling 2.0 forward pass (MODEL-SPEC.md §1.2-1.3) over a batch of segments.
// A segment is a run of consecutive positions of one sequence attending to that sequence's
// cached prefix plus itself under the block-causal mask; all segments' tokens go through the
// dense layers and the experts together, so one step of N sequences reads each weight once.
#ifndef DMOE_MODEL_MODEL_H_
#define DMOE_MODEL_MODEL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/expert_executor.h"
#include "model/kernels.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace dmoe::model {

struct ForwardSegment {
  // Cached prefix [0, start). Null means no cache: start must be 0 and persist 0.
  KvSequence* kv = nullptr;
  int64_t start = 0;                 // absolute position of tokens[0]; == kv->length()
  std::vector<int32_t> tokens;
  // The first `persist` tokens' K/V are appended to kv (it ends at start + persist).
  int64_t persist = 0;
  // Block-causal mask granularity: key visible iff key_pos / block <= query_pos / block.
  // The diffusion block length, or 1 for causal (autoregressive) attention.
  int64_t attention_block = 32;
  // Logits are returned for tokens [logits_from, tokens.size()).
  int64_t logits_from = 0;
};

// Timings of one forward, for benchmarks and metrics.
struct ForwardStats {
  double attention_seconds = 0;  // norms, QKV, attention, output projection
  double moe_seconds = 0;        // routing, experts (incl. transport), shared experts, dense FFN
  double head_seconds = 0;       // final norm + lm_head
};

// Thread-compatible: one Forward at a time (kernels carry scratch).
class Model {
 public:
  Model(const ModelConfig& config, const ModelWeights& weights) : config_(config), weights_(weights) {}

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }

  // Runs all segments as one batch. Returns per segment logits
  // [(tokens.size() - logits_from) * vocab_size] (F32). INVALID_ARGUMENT for malformed
  // segments (token ids out of range, start != cached length, ...); RESOURCE_EXHAUSTED when
  // the KV cache cannot hold the persisted tokens; executor errors pass through.
  absl::StatusOr<std::vector<std::vector<float>>> Forward(std::vector<ForwardSegment>& segments,
                                                          Kernels& kernels,
                                                          ExpertExecutor& experts,
                                                          ForwardStats* stats = nullptr) const;

  // KV cache geometry for this model.
  KvCacheOptions KvOptions(int64_t page_tokens, int64_t max_pages) const;

 private:
  absl::Status Validate(const std::vector<ForwardSegment>& segments) const;
  ModelConfig config_;
  const ModelWeights& weights_;
};

}  // namespace dmoe::model

#endif  // DMOE_MODEL_MODEL_H_
