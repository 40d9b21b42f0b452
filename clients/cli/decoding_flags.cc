#include "clients/cli/decoding_flags.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace dmoe::cli {

void AddPromptFlags(CLI::App* cmd, PromptFlags* flags) {
  cmd->add_option("--prompt", flags->prompt, "Raw prompt text");
  cmd->add_option("--chat", flags->chat, "A user message, rendered with the chat template");
  cmd->add_option("--prompt-ids", flags->prompt_ids, "Prompt token ids, e.g. 1,2,3");
}

absl::Status CheckPromptFlags(const PromptFlags& flags) {
  const int given = flags.prompt.has_value() + flags.chat.has_value() +
                    flags.prompt_ids.has_value();
  if (given != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "give exactly one of --prompt, --chat or --prompt-ids (", given == 0 ? "none" : "several",
        " given)"));
  }
  if (flags.prompt && flags.prompt->empty()) {
    return absl::InvalidArgumentError("--prompt is empty: give the text to continue");
  }
  if (flags.chat && flags.chat->empty()) {
    return absl::InvalidArgumentError("--chat is empty: give the user's message");
  }
  if (flags.prompt_ids && flags.prompt_ids->empty()) {
    return absl::InvalidArgumentError("--prompt-ids is empty: give token ids, e.g. 1,2,3");
  }
  return absl::OkStatus();
}

void AddDecodingFlags(CLI::App* cmd, DecodingFlags* flags) {
  const engine::GenerationParams defaults;
  // A command may preset a flag to its own workload default (eval, bench: shorter outputs).
  auto with_default = [](absl::string_view help, const auto& preset, auto value) {
    return absl::StrCat(help, " (default: ", preset.value_or(value), ")");
  };
  cmd->add_option("--mode", flags->mode, "diffusion or ar (default: from the checkpoint)");
  cmd->add_option("--max-new-tokens", flags->max_new_tokens,
                  with_default("Generation length limit", flags->max_new_tokens,
                               defaults.max_new_tokens));
  cmd->add_option("--threshold", flags->threshold,
                  with_default("Commit masked tokens above this confidence", flags->threshold,
                               defaults.threshold));
  cmd->add_option("--block-length", flags->block_length,
                  "Diffusion block length (default: the model's)");
  cmd->add_option("--steps", flags->steps,
                  with_default("Max forwards per block (reference `steps`)", flags->steps,
                               defaults.steps));
  cmd->add_option("--temperature", flags->temperature,
                  with_default("0 = greedy", flags->temperature, defaults.sampling.temperature));
  cmd->add_option("--top-k", flags->top_k, with_default("0 = off", flags->top_k, defaults.sampling.top_k));
  cmd->add_option("--top-p", flags->top_p, with_default("1 = off", flags->top_p, defaults.sampling.top_p));
  cmd->add_option("--seed", flags->seed, with_default("Sampling seed", flags->seed, defaults.sampling.seed));
  cmd->add_option("--editing", flags->editing,
                  "LLaDA2.1 token editing preset: off, speed (threshold 0.5, edit threshold 0) or "
                  "quality (threshold 0.7, edit threshold 0.5) (default: off); explicit flags win");
  cmd->add_option("--edit-threshold", flags->edit_threshold,
                  "LLaDA2.1 token editing: rewrite decoded tokens whose argmax differs with "
                  "confidence above this; turns editing on (default: off)");
  cmd->add_option("--max-post-steps", flags->max_post_steps,
                  with_default("With editing: edit-only forwards per block after its masks",
                               flags->max_post_steps, defaults.max_post_steps));
}

absl::StatusOr<engine::DecodingRequest> ToDecodingRequest(const DecodingFlags& flags) {
  engine::DecodingRequest r;
  DMOE_ASSIGN_OR_RETURN(r.mode, engine::ParseDecodeMode(flags.mode, "--mode"));
  r.max_new_tokens = flags.max_new_tokens;
  r.threshold = flags.threshold;
  if (flags.block_length != 0) r.block_length = flags.block_length;
  r.steps = flags.steps;
  r.temperature = flags.temperature;
  r.top_k = flags.top_k;
  r.top_p = flags.top_p;
  r.seed = flags.seed;
  DMOE_ASSIGN_OR_RETURN(r.editing, engine::ParseEditingPreset(flags.editing, "--editing"));
  r.edit_threshold = flags.edit_threshold;
  r.max_post_steps = flags.max_post_steps;
  return r;
}

dmoe::v1::DecodingParams ToDecodingParamsProto(const engine::DecodingRequest& r) {
  dmoe::v1::DecodingParams p;
  if (r.mode) {
    p.set_mode(*r.mode == engine::DecodeMode::kAutoregressive
                   ? dmoe::v1::DECODE_MODE_AUTOREGRESSIVE
                   : dmoe::v1::DECODE_MODE_DIFFUSION);
  }
  if (r.max_new_tokens) p.set_max_new_tokens(*r.max_new_tokens);
  if (r.threshold) p.set_threshold(*r.threshold);
  if (r.block_length) p.set_block_length(*r.block_length);
  if (r.steps) p.set_steps(*r.steps);
  if (r.temperature) p.set_temperature(*r.temperature);
  if (r.top_k) p.set_top_k(*r.top_k);
  if (r.top_p) p.set_top_p(*r.top_p);
  if (r.seed) p.set_seed(*r.seed);
  if (r.editing) p.set_editing(engine::EditingPresetName(*r.editing));
  if (r.edit_threshold) p.set_edit_threshold(*r.edit_threshold);
  if (r.max_post_steps) p.set_max_post_steps(*r.max_post_steps);
  if (r.stop_ids) p.mutable_stop_ids()->mutable_ids()->Add(r.stop_ids->begin(), r.stop_ids->end());
  return p;
}

}  // namespace dmoe::cli
