// Turns logits into a proposed token and its confidence per position (MODEL-SPEC.md §4.5-4.6).
// Runs wherever the logits are (the attention service in a cluster); only ids and confidences
// travel further.
#ifndef DMOE_ENGINE_SAMPLING_H_
#define DMOE_ENGINE_SAMPLING_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace dmoe::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax), the published setting
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off
  uint64_t seed = 0;

  // INVALID_ARGUMENT naming the field: temperature < 0 or not finite, top_k < 0,
  // top_p outside (0, 1].
  absl::Status Validate() const;

  // True when SampleRows is the plain argmax with confidence = the softmax probability over the
  // full vocabulary (temperature 0, no top_k / top_p): what the GPU's fused lm_head reduction
  // computes. Other settings need the row's logits.
  bool IsPlainGreedy() const { return temperature == 0.0f && top_k == 0 && top_p >= 1.0f; }
};

// Proposals for a run of positions: token[i] and its confidence (the probability of token[i]
// under the filtered, renormalised distribution).
struct Proposal {
  std::vector<int32_t> tokens;
  std::vector<float> confidence;
};

// Samples every row of `logits` [rows, vocab]. Randomness (temperature > 0) is a pure function
// of (seed, stream, row), so any process reproduces it: `stream` identifies the forward
// (e.g. the sequence's forward counter) and rows are numbered from 0.
Proposal SampleRows(const float* logits, int64_t rows, int64_t vocab, const SamplingParams& params,
                    uint64_t stream);

}  // namespace dmoe::engine

#endif  // DMOE_ENGINE_SAMPLING_H_
