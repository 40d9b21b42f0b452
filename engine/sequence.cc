#include "engine/sequence.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace dmoe::engine {
namespace {

// Finite even if a probability underflowed to 0.
float LogProb(float probability) {
  return std::log(std::max(probability, std::numeric_limits<float>::min()));
}

}  // namespace

std::string FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
  }
  return "?";
}

absl::Status GenerationParams::Validate(int64_t vocab_size) const {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (max_new_tokens <= 0) return bad("max_new_tokens must be >= 1, got ", max_new_tokens);
  if (!(threshold >= 0.0f && threshold <= 1.0f)) {
    return bad("threshold must be in [0, 1], got ", threshold);
  }
  if (block_length <= 0 || block_length > 4096) {
    return bad("block_length must be in [1, 4096], got ", block_length);
  }
  if (steps <= 0) return bad("steps must be >= 1, got ", steps);
  if (mode == DecodeMode::kDiffusion && (mask_id < 0 || mask_id >= vocab_size)) {
    return bad("mask_id ", mask_id, " is outside the vocabulary [0, ", vocab_size, ")");
  }
  for (int32_t id : stop_ids) {
    if (id < 0 || id >= vocab_size) return bad("stop id ", id, " is outside the vocabulary");
    if (mode == DecodeMode::kDiffusion && id == mask_id) {
      return bad("stop id ", id, " equals the mask id");
    }
  }
  if (edit_threshold.has_value()) {
    if (mode != DecodeMode::kDiffusion) {
      return bad("edit_threshold applies to diffusion decoding only");
    }
    if (!(*edit_threshold >= 0.0f && *edit_threshold <= 1.0f)) {
      return bad("edit_threshold must be in [0, 1], got ", *edit_threshold);
    }
  }
  // Bounded so that max_post_steps cannot push the per-block forward bound past any sane value.
  if (max_post_steps < 0 || max_post_steps > 4096) {
    return bad("max_post_steps must be in [0, 4096], got ", max_post_steps);
  }
  if (max_block_forwards < 0) {
    return bad("max_block_forwards must be >= 0 (0 = the default), got ", max_block_forwards);
  }
  return sampling.Validate();
}

absl::StatusOr<Sequence> Sequence::Create(std::vector<int32_t> prompt,
                                          const GenerationParams& params) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  Sequence s;
  s.params_ = params;
  s.prompt_length_ = static_cast<int64_t>(prompt.size());
  s.tokens_ = std::move(prompt);
  s.logprobs_.assign(s.tokens_.size(), 0.0f);
  if (params.mode == DecodeMode::kDiffusion) {
    const int64_t b = params.block_length;
    s.canvas_end_ = (s.prompt_length_ + params.max_new_tokens + b - 1) / b * b;
    // Reference: steps = min(steps, gen_length // minimal_topk), minimal_topk = 1.
    s.effective_steps_ = std::min(params.steps, params.max_new_tokens);
    s.StartBlock(s.prompt_length_ / b * b);
    s.denoised_block_start_ = s.block_start_;
    s.last_edited_.assign(b, false);
  }
  return s;
}

void Sequence::StartBlock(int64_t start) {
  block_start_ = start;
  block_.assign(params_.block_length, params_.mask_id);
  // The partial last prompt block: its prompt tokens stay, the rest are masks.
  for (int64_t p = start; p < prompt_length_; ++p) block_[p - start] = tokens_[p];
  block_logprobs_.assign(params_.block_length, 0.0f);
  tokens_.resize(start);
  logprobs_.resize(start);
  block_step_ = 0;
  post_steps_ = 0;
}

// Reference schedule: B // steps per step, the first B % steps steps one more.
int64_t Sequence::StepQuota(int64_t step) const {
  const int64_t b = params_.block_length, n = effective_steps_;
  return b / n + (step < b % n ? 1 : 0);
}

StepPlan Sequence::NextStep() const {
  StepPlan plan;
  plan.start = cached_;
  plan.sampling = params_.sampling;
  plan.stream = static_cast<uint64_t>(forwards_);
  if (params_.mode == DecodeMode::kAutoregressive) {
    plan.tokens.assign(tokens_.begin() + cached_, tokens_.end());
    plan.persist = static_cast<int64_t>(plan.tokens.size());
    plan.attention_block = 1;
    plan.logits_from = plan.persist - 1;
    return plan;
  }
  // [clean, uncached prefix (prompt blocks or the previous block)] + [current block]
  plan.tokens.assign(tokens_.begin() + cached_, tokens_.begin() + block_start_);
  plan.persist = block_start_ - cached_;
  plan.tokens.insert(plan.tokens.end(), block_.begin(), block_.end());
  plan.attention_block = params_.block_length;
  plan.logits_from = plan.persist;
  return plan;
}

absl::Status Sequence::Apply(const StepPlan& plan, const Proposal& proposal) {
  if (done()) return absl::FailedPreconditionError("sequence already finished");
  const size_t expected = plan.tokens.size() - plan.logits_from;
  if (proposal.tokens.size() != expected || proposal.confidence.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", expected, " proposals, got ",
                                                   proposal.tokens.size()));
  }
  cached_ = plan.start + plan.persist;
  ++forwards_;
  return params_.mode == DecodeMode::kDiffusion ? ApplyDiffusion(proposal)
                                                : ApplyAutoregressive(proposal);
}

absl::Status Sequence::ApplyAutoregressive(const Proposal& proposal) {
  const int32_t token = proposal.tokens.back();
  tokens_.push_back(token);
  logprobs_.push_back(LogProb(proposal.confidence.back()));
  const int64_t generated = static_cast<int64_t>(tokens_.size()) - prompt_length_;
  if (std::find(params_.stop_ids.begin(), params_.stop_ids.end(), token) !=
      params_.stop_ids.end()) {
    finish_reason_ = FinishReason::kStop;
  } else if (generated >= params_.max_new_tokens) {
    finish_reason_ = FinishReason::kLength;
  }
  return absl::OkStatus();
}

absl::Status Sequence::ApplyDiffusion(const Proposal& proposal) {
  const int64_t b = params_.block_length;
  denoised_block_start_ = block_start_;
  last_edited_.assign(b, false);
  if (params_.editing()) return ApplyEditing(proposal);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::vector<float> confidence(b, kNegInf);
  int64_t active = 0, above = 0;
  for (int64_t i = 0; i < b; ++i) {
    if (block_[i] != params_.mask_id) continue;
    ++active;
    confidence[i] = proposal.confidence[i];
    if (confidence[i] > params_.threshold) ++above;
  }
  // Commit everything above the threshold if that meets this step's quota, else the
  // quota's most confident positions (ties to the lower position).
  const int64_t quota = StepQuota(block_step_);
  auto commit = [&](int64_t i) {
    block_[i] = proposal.tokens[i];
    block_logprobs_[i] = LogProb(proposal.confidence[i]);
  };
  if (above >= quota) {
    for (int64_t i = 0; i < b; ++i) {
      if (confidence[i] > params_.threshold) commit(i);
    }
  } else {
    std::vector<int64_t> order(b);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return confidence[x] > confidence[y]; });
    for (int64_t r = 0; r < std::min(quota, active); ++r) commit(order[r]);
  }
  ++block_step_;
  const bool masks_left =
      std::find(block_.begin(), block_.end(), params_.mask_id) != block_.end();
  if (!masks_left || block_step_ >= effective_steps_) FinishBlock();
  return absl::OkStatus();
}

// One iteration of LLaDA2.1's generate() loop after its forward: M2T over the positions that
// were masked at the top of the iteration (A), T2T over the decoded non-prompt ones, both from
// this forward's proposals and written together.
absl::Status Sequence::ApplyEditing(const Proposal& proposal) {
  const int64_t b = params_.block_length;
  const int32_t mask = params_.mask_id;
  std::vector<bool> active(b), write(b, false);
  int64_t n_active = 0;
  for (int64_t i = 0; i < b; ++i) n_active += (active[i] = block_[i] == mask) ? 1 : 0;
  // M2T: every masked position above the threshold, else the single most confident one
  // (num_to_transfer = 1; ties to the lower position).
  if (n_active > 0) {
    int64_t above = 0, best = -1;
    for (int64_t i = 0; i < b; ++i) {
      if (!active[i]) continue;
      if (proposal.confidence[i] > params_.threshold) {
        write[i] = true;
        ++above;
      }
      if (best < 0 || proposal.confidence[i] > proposal.confidence[best]) best = i;
    }
    if (above == 0) write[best] = true;
  }
  // T2T: rewrite decoded, non-prompt positions whose argmax differs, strictly above the edit
  // threshold. Past the server's forward bound no more edits are made.
  bool edited = false;
  if (block_step_ < params_.EffectiveMaxBlockForwards()) {
    for (int64_t i = 0; i < b; ++i) {
      if (active[i] || block_start_ + i < prompt_length_) continue;
      if (!(proposal.confidence[i] > *params_.edit_threshold) || proposal.tokens[i] == block_[i]) {
        continue;
      }
      write[i] = true;
      last_edited_[i] = true;
      edited = true;
      ++edits_;
      if (proposal.tokens[i] == mask) ++remasks_;
    }
  }
  for (int64_t i = 0; i < b; ++i) {
    if (!write[i]) continue;
    block_[i] = proposal.tokens[i];
    // A token edited back to the mask id is uncommitted again (refilled later).
    block_logprobs_[i] = last_edited_[i] && proposal.tokens[i] == mask
                             ? 0.0f
                             : LogProb(proposal.confidence[i]);
  }
  ++block_step_;
  // Stable exit: no masks at the top and nothing edited.
  if ((n_active == 0 && !edited) || !BlockContinues()) FinishBlock();
  return absl::OkStatus();
}

bool Sequence::BlockContinues() {
  const int64_t bound = params_.EffectiveMaxBlockForwards();
  const bool masks_left =
      std::find(block_.begin(), block_.end(), params_.mask_id) != block_.end();
  if (masks_left) {
    // Past the bound only M2T runs, which fills at least one mask per forward unless the model
    // proposes the mask id itself: B more forwards end the block whatever happens.
    return block_step_ < bound + params_.block_length;
  }
  if (block_step_ >= bound) return false;
  ++post_steps_;
  return post_steps_ <= params_.max_post_steps;
}

void Sequence::FinishBlock() {
  tokens_.insert(tokens_.end(), block_.begin(), block_.end());
  logprobs_.insert(logprobs_.end(), block_logprobs_.begin(), block_logprobs_.end());
  const int64_t end = block_start_ + params_.block_length;
  bool stopped = false;
  for (int64_t p = prompt_length_; p < end && !stopped; ++p) {
    stopped = std::find(params_.stop_ids.begin(), params_.stop_ids.end(), tokens_[p]) !=
              params_.stop_ids.end();
  }
  if (stopped) {
    finish_reason_ = FinishReason::kStop;
  } else if (end >= canvas_end_) {
    finish_reason_ = FinishReason::kLength;
  } else {
    StartBlock(end);
  }
}

std::vector<int32_t> Sequence::DenoisedBlock() const {
  if (denoised_block_start_ == block_start_) return block_;
  // Finished and moved on: the block is in tokens_ now.
  const auto begin = tokens_.begin() + denoised_block_start_;
  return std::vector<int32_t>(begin, begin + params_.block_length);
}

std::vector<int32_t> Sequence::FinalTokens() const {
  const int64_t committed_end =
      params_.mode == DecodeMode::kDiffusion && !done() ? block_start_
                                                        : static_cast<int64_t>(tokens_.size());
  const int64_t end = std::min(committed_end, prompt_length_ + params_.max_new_tokens);
  std::vector<int32_t> out;
  for (int64_t p = prompt_length_; p < end; ++p) {
    out.push_back(tokens_[p]);
    if (std::find(params_.stop_ids.begin(), params_.stop_ids.end(), tokens_[p]) !=
        params_.stop_ids.end()) {
      break;
    }
  }
  return out;
}

std::vector<float> Sequence::FinalLogprobs() const {
  const size_t n = FinalTokens().size();
  const auto begin = logprobs_.begin() + prompt_length_;
  return std::vector<float>(begin, begin + static_cast<int64_t>(n));
}

std::vector<int32_t> Sequence::TakeNewTokens() {
  std::vector<int32_t> all = FinalTokens();
  std::vector<int32_t> fresh(all.begin() + std::min(taken_, all.size()), all.end());
  taken_ = all.size();
  return fresh;
}

}  // namespace dmoe::engine
