// One place that turns what a client asked for into the GenerationParams of a request, so a
// request gets the same defaults wherever it enters: the Generation API (scheduler), `dmoe
// generate`, `dmoe eval` and `dmoe bench --engine`. Every knob the client leaves out takes the
// model's default (mode from the checkpoint kind, B from config.json, mask and stop ids from
// the tokenizer) or GenerationParams' own default (threshold, steps, length, sampling).
#ifndef DMOE_ENGINE_GENERATION_PARAMS_H_
#define DMOE_ENGINE_GENERATION_PARAMS_H_

#include <cstdint>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sequence.h"
#include "model/config.h"

namespace dmoe::engine {

// The decoding modes of the LLaDA2.1 model cards ("Best Practices", Denoising Thresholds, of
// huggingface.co/inclusionAI/LLaDA2.1-mini; docs/engine.md): speed = threshold 0.5, edit
// threshold 0.0; quality = threshold 0.7, edit threshold 0.5; both max_post_steps 16. Off =
// no editing (the LLaDA2.0 loop; threshold keeps its own default).
enum class EditingPreset { kOff, kSpeed, kQuality };

// "off", "speed" or "quality"; "" = unset. INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<std::optional<EditingPreset>> ParseEditingPreset(absl::string_view name,
                                                               absl::string_view field);
std::string EditingPresetName(EditingPreset preset);

// The decoding knobs of one request as the client gave them; unset = the default.
struct DecodingRequest {
  std::optional<DecodeMode> mode;
  std::optional<int64_t> max_new_tokens;
  std::optional<float> threshold;
  std::optional<int64_t> block_length;
  std::optional<int64_t> steps;
  std::optional<float> temperature;
  std::optional<int32_t> top_k;
  std::optional<float> top_p;
  std::optional<uint64_t> seed;
  std::optional<std::vector<int32_t>> stop_ids;  // set and empty: stop only at the length limit
  // LLaDA2.1 token editing: a preset (below), then these override it. An edit_threshold turns
  // editing on; without one (and without a preset that sets one) decoding is LLaDA2.0's.
  std::optional<EditingPreset> editing = std::nullopt;
  std::optional<float> edit_threshold = std::nullopt;
  std::optional<int64_t> max_post_steps = std::nullopt;
};

// What the served model decides for a request that leaves it out.
struct ModelDecodingDefaults {
  DecodeMode mode = DecodeMode::kDiffusion;
  int64_t block_length = 32;
  int32_t mask_id = -1;
  std::vector<int32_t> stop_ids;

  // The mode from the checkpoint kind and B from config.json; the token ids come from the
  // tokenizer or flags (model::ResolveDecodeTokenIds).
  static ModelDecodingDefaults For(const model::ModelConfig& config, int32_t mask_id,
                                   std::vector<int32_t> stop_ids);
};

// Not validated: call GenerationParams::Validate (Sequence::Create does).
GenerationParams BuildGenerationParams(const DecodingRequest& request,
                                       const ModelDecodingDefaults& defaults);

// INVALID_ARGUMENT "prompt is too long: ..." when the prompt and max_new_tokens do not fit the
// model's context (max_position_embeddings). The server and the CLI refuse with this check.
absl::Status CheckFitsContext(int64_t prompt_tokens, int64_t max_new_tokens,
                              const model::ModelConfig& config);

// "diffusion" or "ar" (also "autoregressive"); "" = unset (the checkpoint's kind decides).
// INVALID_ARGUMENT naming `field` otherwise.
absl::StatusOr<std::optional<DecodeMode>> ParseDecodeMode(absl::string_view name,
                                                          absl::string_view field);

}  // namespace dmoe::engine

#endif  // DMOE_ENGINE_GENERATION_PARAMS_H_
