#include "engine/generation_params.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace dmoe::engine {

ModelDecodingDefaults ModelDecodingDefaults::For(const model::ModelConfig& config,
                                                 int32_t mask_id, std::vector<int32_t> stop_ids) {
  return {.mode = config.kind == model::ModelKind::kAutoregressive ? DecodeMode::kAutoregressive
                                                                   : DecodeMode::kDiffusion,
          .block_length = config.block_length,
          .mask_id = mask_id,
          .stop_ids = std::move(stop_ids)};
}

GenerationParams BuildGenerationParams(const DecodingRequest& request,
                                       const ModelDecodingDefaults& defaults) {
  GenerationParams p;
  p.mode = request.mode.value_or(defaults.mode);
  p.max_new_tokens = request.max_new_tokens.value_or(p.max_new_tokens);
  p.threshold = request.threshold.value_or(p.threshold);
  p.block_length = request.block_length.value_or(defaults.block_length);
  p.steps = request.steps.value_or(p.steps);
  p.sampling.temperature = request.temperature.value_or(p.sampling.temperature);
  p.sampling.top_k = request.top_k.value_or(p.sampling.top_k);
  p.sampling.top_p = request.top_p.value_or(p.sampling.top_p);
  p.sampling.seed = request.seed.value_or(p.sampling.seed);
  p.mask_id = defaults.mask_id;
  p.stop_ids = request.stop_ids.value_or(defaults.stop_ids);
  // Editing: the preset first, then the explicit knobs.
  switch (request.editing.value_or(EditingPreset::kOff)) {
    case EditingPreset::kOff: break;
    case EditingPreset::kSpeed:
      p.threshold = request.threshold.value_or(0.5f);
      p.edit_threshold = 0.0f;
      p.max_post_steps = 16;
      break;
    case EditingPreset::kQuality:
      p.threshold = request.threshold.value_or(0.7f);
      p.edit_threshold = 0.5f;
      p.max_post_steps = 16;
      break;
  }
  if (request.edit_threshold) p.edit_threshold = request.edit_threshold;
  p.max_post_steps = request.max_post_steps.value_or(p.max_post_steps);
  return p;
}

absl::StatusOr<std::optional<EditingPreset>> ParseEditingPreset(absl::string_view name,
                                                               absl::string_view field) {
  if (name.empty()) return std::nullopt;
  if (name == "off") return EditingPreset::kOff;
  if (name == "speed") return EditingPreset::kSpeed;
  if (name == "quality") return EditingPreset::kQuality;
  return absl::InvalidArgumentError(
      absl::StrCat(field, " must be 'off', 'speed' or 'quality', got '", name, "'"));
}

std::string EditingPresetName(EditingPreset preset) {
  switch (preset) {
    case EditingPreset::kOff: return "off";
    case EditingPreset::kSpeed: return "speed";
    case EditingPreset::kQuality: return "quality";
  }
  return "?";
}

absl::Status CheckFitsContext(int64_t prompt_tokens, int64_t max_new_tokens,
                              const model::ModelConfig& config) {
  if (prompt_tokens + max_new_tokens <= config.max_position_embeddings) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "prompt is too long: ", prompt_tokens, " prompt tokens + max_new_tokens ", max_new_tokens,
      " exceed the model's max_position_embeddings ", config.max_position_embeddings));
}

absl::StatusOr<std::optional<DecodeMode>> ParseDecodeMode(absl::string_view name,
                                                          absl::string_view field) {
  if (name.empty()) return std::nullopt;
  if (name == "diffusion") return DecodeMode::kDiffusion;
  if (name == "ar" || name == "autoregressive") return DecodeMode::kAutoregressive;
  return absl::InvalidArgumentError(
      absl::StrCat(field, " must be 'diffusion' or 'ar', got '", name, "'"));
}

}  // namespace dmoe::engine
