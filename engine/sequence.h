// The denoising policy of one request (MODEL-SPEC.md §4.3-4.5, 4.7) as a state machine that
// is independent of where the model runs: it plans the next forward (which positions, which
// tokens, which K/V to persist) and applies the proposed tokens/confidences that come back.
// The single-process Engine and the cluster scheduler both drive it.
//
// Block diffusion with a KV cache, exactly equivalent to the reference full-recompute
// generate(): block boundaries are multiples of B from position 0; the partial last prompt
// block is decoded together with the first generated tokens; a finished block's K/V are
// persisted by the next block's first forward, which carries [clean previous block, current
// block] (dInfer's cross-block forward), so no extra forward is spent per block.
//
// With `edit_threshold` set, the LLaDA2.1 token-editing loop (M2T + T2T, MODEL-SPEC.md §4.5):
// besides filling masks, a forward may rewrite already-decoded, non-prompt tokens of the
// current block (possibly back to the mask id), and after the masks are gone up to
// `max_post_steps` edit-only forwards run until the block is stable. Only the current block is
// ever edited; finished blocks are not, so their cached K/V stay valid.
#ifndef DMOE_ENGINE_SEQUENCE_H_
#define DMOE_ENGINE_SEQUENCE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sampling.h"

namespace dmoe::engine {

enum class DecodeMode {
  kDiffusion,       // block diffusion with threshold commits
  kAutoregressive,  // causal attention, logits[i] predict token i+1, one token per forward
};

enum class FinishReason { kNone, kStop, kLength };
std::string FinishReasonName(FinishReason reason);

struct GenerationParams {
  DecodeMode mode = DecodeMode::kDiffusion;
  int64_t max_new_tokens = 128;  // gen_length of the reference
  float threshold = 0.95f;       // commit every masked token with confidence > threshold
  int64_t block_length = 32;     // B; 1 = the diffusion model's one-token-per-forward baseline
  int64_t steps = 32;            // reference `steps`: at most this many forwards per block
  SamplingParams sampling;
  int32_t mask_id = -1;
  std::vector<int32_t> stop_ids;

  // LLaDA2.1 token editing (diffusion only). Unset: the LLaDA2.0 loop above, unchanged. Set
  // (in [0, 1]): LLaDA2.1's generate() loop: per forward, commit every masked position with
  // confidence > threshold, else the single most confident one (`steps` is not used), and
  // rewrite every decoded, non-prompt position of the block whose argmax differs from its
  // token with confidence > edit_threshold (1 = no rewrites, but the post steps still run).
  std::optional<float> edit_threshold;
  // Editing only: edit-only forwards allowed per block once it has no masks (the original's
  // max_post_steps, >= 0) [16]. The block ends when such a forward edits nothing, or without
  // another forward once this budget is spent.
  int64_t max_post_steps = 16;
  // Editing only: a bound the original does not have, so that no request loops without end
  // (edits can re-mask tokens forever). After this many forwards on one block, edits stop and
  // the block ends as soon as its masks are filled (at most B more forwards). 0 = the default,
  // kDefaultBlockForwardsPerToken * block_length + max_post_steps.
  int64_t max_block_forwards = 0;
  static constexpr int64_t kDefaultBlockForwardsPerToken = 4;

  bool editing() const { return mode == DecodeMode::kDiffusion && edit_threshold.has_value(); }
  int64_t EffectiveMaxBlockForwards() const {
    return max_block_forwards > 0 ? max_block_forwards
                                  : kDefaultBlockForwardsPerToken * block_length + max_post_steps;
  }

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate(int64_t vocab_size) const;
};

// What the next forward of a sequence must compute.
struct StepPlan {
  int64_t start = 0;              // first position; equals the cached length
  std::vector<int32_t> tokens;    // positions [start, start + tokens.size())
  int64_t persist = 0;            // leading tokens whose K/V join the cache
  int64_t attention_block = 1;    // block-causal granularity (B, or 1 = causal)
  int64_t logits_from = 0;        // proposals are needed for tokens [logits_from, end)
  SamplingParams sampling;
  uint64_t stream = 0;            // RNG stream: the sequence's forward counter
};

// Thread-compatible.
class Sequence {
 public:
  static absl::StatusOr<Sequence> Create(std::vector<int32_t> prompt, const GenerationParams& params);

  bool done() const { return finish_reason_ != FinishReason::kNone; }
  FinishReason finish_reason() const { return finish_reason_; }
  const GenerationParams& params() const { return params_; }
  int64_t prompt_length() const { return prompt_length_; }
  int64_t forwards() const { return forwards_; }
  int64_t cached_length() const { return cached_; }
  // Position of the block being decoded (diffusion) and its current contents (masks included).
  int64_t block_start() const { return block_start_; }
  const std::vector<int32_t>& block() const { return block_; }
  // The block the last forward denoised, after its commits: the finished block when that
  // forward finished it (block() has moved on to the next one by then). What --visual and the
  // API's canvas events show. Before the first forward: the current block.
  int64_t denoised_block_start() const { return denoised_block_start_; }
  std::vector<int32_t> DenoisedBlock() const;
  // Per position of DenoisedBlock(): whether the last forward rewrote it (T2T edit; editing
  // only), as opposed to leaving it or filling a mask.
  const std::vector<bool>& DenoisedEdited() const { return last_edited_; }

  // Token edits (T2T rewrites, re-masks included) so far, and how many of them turned a token
  // back into the mask id. Edits of blocks that are final count as much as others: the count
  // is of what the decoder did, not of what the output shows.
  int64_t edits() const { return edits_; }
  int64_t remasks() const { return remasks_; }

  // The next forward. Requires !done().
  StepPlan NextStep() const;
  // Applies the proposals for the plan's rows [logits_from, end). INVALID_ARGUMENT when the
  // proposal count does not match the plan.
  absl::Status Apply(const StepPlan& plan, const Proposal& proposal);
  // The cache was lost (e.g. an attention replica died): the next plan re-prefills from the
  // committed tokens. The output is unchanged.
  void ResetCache() { cached_ = 0; }

  // Generated ids so far that are final (whole committed blocks / AR tokens), truncated as
  // the final output will be (at max_new_tokens, and after the first stop token).
  std::vector<int32_t> FinalTokens() const;
  // The log-probability of each of FinalTokens() when it was committed: log of its confidence,
  // i.e. the softmax probability under the distribution it was drawn from (the full vocabulary
  // when greedy; the temperature / top-k / top-p distribution when sampling).
  std::vector<float> FinalLogprobs() const;
  // Final tokens not returned by an earlier call (for streaming).
  std::vector<int32_t> TakeNewTokens();

 private:
  Sequence() = default;
  absl::Status ApplyDiffusion(const Proposal& proposal);
  absl::Status ApplyAutoregressive(const Proposal& proposal);
  absl::Status ApplyEditing(const Proposal& proposal);
  void StartBlock(int64_t start);
  void FinishBlock();
  int64_t StepQuota(int64_t step) const;
  // Editing: the top of the original loop before the next forward; false when the block ends
  // there (no masks and the post-step budget or the forward bound is spent).
  bool BlockContinues();

  GenerationParams params_;
  int64_t prompt_length_ = 0;
  std::vector<int32_t> tokens_;  // prompt + final generated tokens (whole blocks)
  std::vector<float> logprobs_;  // parallel to tokens_: log-probability at commit (0 for prompt)
  int64_t cached_ = 0;           // KV cached for tokens_[0, cached_)
  int64_t canvas_end_ = 0;       // reference N = ceil((P + max_new) / B) * B
  int64_t block_start_ = 0;
  int64_t denoised_block_start_ = 0;  // block_start_ of the last diffusion forward
  std::vector<int32_t> block_;   // current block (diffusion)
  std::vector<float> block_logprobs_;  // parallel to block_
  int64_t block_step_ = 0;       // forwards spent on the current block
  int64_t post_steps_ = 0;       // editing: the original's post_steps of the current block
  int64_t edits_ = 0;
  int64_t remasks_ = 0;
  std::vector<bool> last_edited_;  // parallel to DenoisedBlock()
  int64_t effective_steps_ = 0;
  int64_t forwards_ = 0;
  size_t taken_ = 0;
  FinishReason finish_reason_ = FinishReason::kNone;
};

}  // namespace dmoe::engine

#endif  // DMOE_ENGINE_SEQUENCE_H_
