// The LLaDA2.0 / Ling 2.0 forward pass (MODEL-SPEC.md §1.2-1.3) over a batch of segments.
// A segment is a run of consecutive positions of one sequence attending to that sequence's
// cached prefix plus itself under the block-causal mask; all segments' tokens go through the
// dense layers and the experts together, so one step of N sequences reads each weight once.
#ifndef DMOE_MODEL_MODEL_H_
#define DMOE_MODEL_MODEL_H_

#include <cstdint>
#include <memory>
#include <span>
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

// What ValidateForwardSegment reads of a segment: ForwardSegment and its device twin
// gpu::CudaForwardSegment have the same fields over different KV cache types.
struct SegmentShape {
  bool has_kv = false;        // kv != nullptr
  int64_t cached_length = 0;  // kv->length() when has_kv
  int64_t start = 0;
  std::span<const int32_t> tokens;
  int64_t persist = 0;
  int64_t attention_block = 0;
  int64_t logits_from = 0;
};

// The shape of a ForwardSegment or a gpu::CudaForwardSegment.
template <typename Segment>
SegmentShape ShapeOf(const Segment& s) {
  return {.has_kv = s.kv != nullptr,
          .cached_length = s.kv != nullptr ? s.kv->length() : 0,
          .start = s.start,
          .tokens = s.tokens,
          .persist = s.persist,
          .attention_block = s.attention_block,
          .logits_from = s.logits_from};
}

// Per-segment limits a backend adds to the model's; the defaults add none.
struct SegmentCapacity {
  bool kv_cache = true;  // whether a segment may bring a KV cache at all
  // With a cache: the persisted prefix [0, start + persist) must fit in max_pages pages of
  // page_tokens positions (0: no limit).
  int64_t page_tokens = 1;
  int64_t max_pages = 0;
};

// INVALID_ARGUMENT "forward segment <index>: ..." unless the segment is well formed for a model
// with `config` (tokens, persist / logits_from ranges, start == cached length, positions, token
// ids) and fits `capacity`. The one check of the CPU and CUDA forwards, so both refuse the same
// segments with the same messages.
absl::Status ValidateForwardSegment(size_t index, const SegmentShape& segment,
                                    const ModelConfig& config,
                                    const SegmentCapacity& capacity = {});

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
