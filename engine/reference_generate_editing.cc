// LLaDA2.1's generate() loop, literally (see reference_generate.h). Variable names follow the
// original so the two can be read side by side.
#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/reference_generate.h"

namespace dmoe::engine {
namespace {

double LogSoftmaxAt(const float* row, int64_t vocab, int32_t token) {
  const double max = *std::max_element(row, row + vocab);
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
  return static_cast<double>(row[token]) - max - std::log(sum);
}

}  // namespace

absl::StatusOr<ReferenceResult> ReferenceGenerateEditing(const model::Model& model,
                                                         model::Kernels& kernels,
                                                         model::ExpertExecutor& experts,
                                                         const std::vector<int32_t>& prompt,
                                                         const GenerationParams& params) {
  if (!params.editing()) {
    return absl::InvalidArgumentError(
        "ReferenceGenerateEditing needs diffusion decoding with edit_threshold set");
  }
  const int64_t vocab = model.config().vocab_size;
  DMOE_RETURN_IF_ERROR(params.Validate(vocab));
  const int64_t block_length = params.block_length, gen_length = params.max_new_tokens;
  const float threshold = params.threshold, editing_threshold = *params.edit_threshold;
  const int64_t max_post_steps = params.max_post_steps;
  const int32_t mask_id = params.mask_id;
  constexpr int64_t num_to_transfer = 1;
  const int64_t prompt_length = static_cast<int64_t>(prompt.size());
  const int64_t num_blocks = (prompt_length + gen_length + block_length - 1) / block_length;
  const int64_t total_length = num_blocks * block_length;
  std::vector<int32_t> x(prompt);
  x.resize(total_length, mask_id);
  std::vector<float> logprob(total_length, 0.0f);
  auto is_eos = [&](int32_t t) {
    return std::find(params.stop_ids.begin(), params.stop_ids.end(), t) != params.stop_ids.end();
  };

  ReferenceResult result;
  const int64_t prefill_blocks = prompt_length / block_length;
  for (int64_t num_block = prefill_blocks; num_block < num_blocks; ++num_block) {
    const int64_t current_window_end = (num_block + 1) * block_length;
    const int64_t block_start_pos = num_block * block_length;
    int64_t post_steps = 0, block_forwards = 0;
    while (true) {
      const std::vector<int32_t> old_block_tokens(x.begin() + block_start_pos,
                                                  x.begin() + current_window_end);
      std::vector<bool> active_block_mask(block_length);
      int64_t n_active = 0;
      for (int64_t i = 0; i < block_length; ++i) {
        n_active += (active_block_mask[i] = old_block_tokens[i] == mask_id) ? 1 : 0;
      }
      if (n_active == 0) post_steps += 1;
      if (post_steps > max_post_steps) break;
      std::vector<bool> prompt_mask_in_block(block_length, false);
      for (int64_t i = 0; i < block_length; ++i) {
        prompt_mask_in_block[i] = block_start_pos + i < prompt_length;
      }

      if (++block_forwards > 64 * block_length) {
        return absl::InternalError(absl::StrCat("block ", num_block, " did not settle in ",
                                                64 * block_length, " forwards"));
      }
      std::vector<model::ForwardSegment> segment(1);
      segment[0] = {.kv = nullptr,
                    .start = 0,
                    .tokens = std::vector<int32_t>(x.begin(), x.begin() + current_window_end),
                    .persist = 0,
                    .attention_block = block_length,  // block-causal
                    .logits_from = current_window_end - block_length};
      DMOE_ASSIGN_OR_RETURN(auto logits, model.Forward(segment, kernels, experts));
      ++result.forwards;
      const Proposal p = SampleRows(logits[0].data(), block_length, vocab, params.sampling,
                                    static_cast<uint64_t>(result.forwards - 1));
      const std::vector<int32_t>& x0 = p.tokens;
      const std::vector<float>& x0_p = p.confidence;

      std::vector<bool> mask_transfer_index(block_length, false);
      if (n_active > 0) {
        constexpr float kNegInf = -std::numeric_limits<float>::infinity();
        std::vector<float> mask_confidence(block_length, kNegInf);
        int64_t num_high_confidence = 0;
        std::vector<bool> high_conf_mask(block_length, false);
        for (int64_t i = 0; i < block_length; ++i) {
          if (active_block_mask[i]) mask_confidence[i] = x0_p[i];
          high_conf_mask[i] = mask_confidence[i] > threshold && active_block_mask[i];
          num_high_confidence += high_conf_mask[i] ? 1 : 0;
        }
        if (num_high_confidence >= num_to_transfer) {
          mask_transfer_index = high_conf_mask;
        } else {
          // topk(mask_confidence, k = min(num_to_transfer, n_active) = 1); ties to the lower
          // position.
          const int64_t idx = std::max_element(mask_confidence.begin(), mask_confidence.end()) -
                              mask_confidence.begin();
          mask_transfer_index[idx] = true;
        }
      }

      std::vector<bool> editing_transfer_index(block_length, false);
      bool any_edit = false;
      for (int64_t i = 0; i < block_length; ++i) {
        const bool editable_positions = !active_block_mask[i] && !prompt_mask_in_block[i];
        const bool high_conf_editing = editable_positions && x0_p[i] > editing_threshold;
        const bool token_changed = x0[i] != old_block_tokens[i];
        editing_transfer_index[i] = high_conf_editing && token_changed;
        if (editing_transfer_index[i]) {
          any_edit = true;
          ++result.edits;
          if (x0[i] == mask_id) ++result.remasks;
        }
      }
      for (int64_t i = 0; i < block_length; ++i) {
        if (!(mask_transfer_index[i] || editing_transfer_index[i])) continue;
        x[block_start_pos + i] = x0[i];
        logprob[block_start_pos + i] =
            editing_transfer_index[i] && x0[i] == mask_id
                ? 0.0f
                : static_cast<float>(LogSoftmaxAt(logits[0].data() + i * vocab, vocab, x0[i]));
      }

      if (n_active == 0 && !any_edit) break;
    }
    // eos_early_stop
    bool masks_left = false, eos = false;
    for (int64_t i = prompt_length; i < current_window_end; ++i) {
      masks_left = masks_left || x[i] == mask_id;
      eos = eos || is_eos(x[i]);
    }
    if (!masks_left && eos) break;
  }
  for (int64_t i = prompt_length; i < std::min(prompt_length + gen_length, total_length); ++i) {
    result.ids.push_back(x[i]);
    result.logprobs.push_back(logprob[i]);
    if (is_eos(x[i])) break;
  }
  return result;
}

}  // namespace dmoe::engine
