// The request flags of `dmoe generate`, `dmoe client generate`, `dmoe eval` and `dmoe bench`,
// registered once: the prompt (--prompt | --chat | --prompt-ids) and the decoding knobs. Each
// flag is unset unless given, so what a command leaves out takes the same default as a request
// to the server (engine::BuildGenerationParams).
#ifndef DMOE_CLIENTS_CLI_DECODING_FLAGS_H_
#define DMOE_CLIENTS_CLI_DECODING_FLAGS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "engine/generation_params.h"
#include "proto/dmoe/v1/generation.pb.h"

namespace dmoe::cli {

// Exactly one of them; unset = not given (so `--prompt ""` is an empty prompt, not a missing one).
struct PromptFlags {
  std::optional<std::string> prompt = std::nullopt;      // raw text
  std::optional<std::string> chat = std::nullopt;        // one user message, chat template
  std::optional<std::string> prompt_ids = std::nullopt;  // "1,2,3"
};

void AddPromptFlags(CLI::App* cmd, PromptFlags* flags);

// INVALID_ARGUMENT "give exactly one of --prompt, --chat or --prompt-ids" when none or several
// are given, "--prompt is empty" (and so on) when the one given is empty.
absl::Status CheckPromptFlags(const PromptFlags& flags);

struct DecodingFlags {
  std::string mode = "";  // "" = from the checkpoint kind
  std::optional<int64_t> max_new_tokens = std::nullopt;
  std::optional<float> threshold = std::nullopt;
  std::optional<int64_t> block_length = std::nullopt;  // 0 = the model's, as if unset
  std::optional<int64_t> steps = std::nullopt;
  std::optional<float> temperature = std::nullopt;
  std::optional<int32_t> top_k = std::nullopt;
  std::optional<float> top_p = std::nullopt;
  std::optional<uint64_t> seed = std::nullopt;
  std::string editing = "";  // "" = unset; off | speed | quality
  std::optional<float> edit_threshold = std::nullopt;
  std::optional<int64_t> max_post_steps = std::nullopt;
};

// --mode, --max-new-tokens, --threshold, --block-length, --steps, --temperature, --top-k,
// --top-p, --seed, --editing, --edit-threshold, --max-post-steps; the help text shows each
// default.
void AddDecodingFlags(CLI::App* cmd, DecodingFlags* flags);

// INVALID_ARGUMENT for an unknown --mode or --editing. Stop ids are the command's own business.
absl::StatusOr<engine::DecodingRequest> ToDecodingRequest(const DecodingFlags& flags);

// The request's knobs as the Generation API takes them (`dmoe client`, `dmoe bench --server`):
// what is unset stays unset, so the server applies the same defaults.
dmoe::v1::DecodingParams ToDecodingParamsProto(const engine::DecodingRequest& request);

}  // namespace dmoe::cli

#endif  // DMOE_CLIENTS_CLI_DECODING_FLAGS_H_
