// dmoe generate: one prompt through the single-process engine (--device cpu), or through the
// GPU step executor (--device cuda: serve::InProcessModel).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "clients/cli/decoding_flags.h"
#include "clients/cli/denoise_view.h"
#include "common/gpu_index.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "engine/generation_params.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "serve/cuda_step_executor.h"
#include "serve/in_process_model.h"

namespace dmoe::cli {
namespace {

struct GenerateFlags {
  std::string model_dir;
  PromptFlags input;
  DecodingFlags decoding;
  int32_t mask_id = -1;
  std::string stop_ids;
  bool json = false;
  bool visual = false;
  std::string kernels = "cpu";
  int threads = 0;
  std::string device = "cpu";
  int gpu = 0;
};

using Observer = std::function<void(size_t, engine::Sequence&)>;

// Engine::Generate for one request over a StepExecutor (the --device cuda path): the same
// validation, the same plan -> forward -> Apply loop, the same observer calls.
absl::StatusOr<engine::GenerationResult> GenerateWithExecutor(
    scheduler::StepExecutor& executor, const model::ModelConfig& config,
    const std::vector<int32_t>& prompt, const engine::GenerationParams& params,
    const Observer& observer) {
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  DMOE_RETURN_IF_ERROR(params.Validate(config.vocab_size));
  for (int32_t t : prompt) {
    if (t < 0 || t >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token id ", t, " is outside [0, ", config.vocab_size, ")"));
    }
  }
  DMOE_ASSIGN_OR_RETURN(engine::Sequence sequence, engine::Sequence::Create(prompt, params));
  engine::GenerationResult r;
  const std::string id = "generate";
  while (!sequence.done()) {
    std::vector<scheduler::SequenceStep> steps = {{.sequence_id = id, .plan = sequence.NextStep()}};
    absl::StatusOr<std::vector<engine::Proposal>> proposals = executor.Execute(steps);
    if (!proposals.ok()) {
      executor.Release({id});
      return proposals.status();
    }
    DMOE_RETURN_IF_ERROR(sequence.Apply(steps[0].plan, (*proposals)[0]));
    if (r.first_block_seconds == 0 && !sequence.FinalTokens().empty()) {
      r.first_block_seconds = seconds();
    }
    if (observer) observer(0, sequence);
  }
  executor.Release({id});
  r.seconds = seconds();
  r.ids = sequence.FinalTokens();
  r.finish_reason = sequence.finish_reason();
  r.forwards = sequence.forwards();
  r.edits = sequence.edits();
  r.remasks = sequence.remasks();
  return r;
}

absl::Status RunGenerate(const GenerateFlags& f) {
  // Cheap checks first, each naming what is wrong: the prompt flags, the directory, the config.
  DMOE_RETURN_IF_ERROR(CheckPromptFlags(f.input));
  DMOE_RETURN_IF_ERROR(ValidateGpuFlag(f.gpu));
  DMOE_ASSIGN_OR_RETURN(const model::ModelConfig config, model::LoadModelConfig(f.model_dir));
  std::unique_ptr<model::Tokenizer> tokenizer;
  if (std::filesystem::exists(std::filesystem::path(f.model_dir) / "tokenizer.json")) {
    DMOE_ASSIGN_OR_RETURN(tokenizer, model::Tokenizer::Load(f.model_dir));
  } else if (!f.input.prompt_ids) {
    return absl::FailedPreconditionError(absl::StrCat(
        f.model_dir, " has no tokenizer.json: use --prompt-ids, --mask-id and --stop-ids"));
  }

  std::vector<int32_t> prompt;
  if (f.input.prompt_ids) {
    DMOE_ASSIGN_OR_RETURN(prompt, ParseIdList(*f.input.prompt_ids, "--prompt-ids"));
  } else if (f.input.prompt) {
    prompt = tokenizer->Encode(*f.input.prompt);
  } else {
    DMOE_ASSIGN_OR_RETURN(std::string text, model::RenderChat({{"user", *f.input.chat}}, true));
    prompt = tokenizer->Encode(text);
  }

  std::optional<int32_t> mask_override;
  if (f.mask_id >= 0) mask_override = f.mask_id;
  DMOE_ASSIGN_OR_RETURN(engine::DecodingRequest asked, ToDecodingRequest(f.decoding));
  if (!f.stop_ids.empty()) {
    DMOE_ASSIGN_OR_RETURN(asked.stop_ids, ParseIdList(f.stop_ids, "--stop-ids"));
  }
  model::DecodeTokenIds ids{.mask_id = f.mask_id, .stop_ids = {}};
  if (tokenizer) {
    DMOE_ASSIGN_OR_RETURN(ids, model::ResolveDecodeTokenIds(*tokenizer, mask_override,
                                                            asked.stop_ids));
  }
  const engine::GenerationParams params = engine::BuildGenerationParams(
      asked, engine::ModelDecodingDefaults::For(config, ids.mask_id, ids.stop_ids));
  // The server's checks, before any weight is loaded.
  DMOE_RETURN_IF_ERROR(params.Validate(config.vocab_size));
  DMOE_RETURN_IF_ERROR(
      engine::CheckFitsContext(static_cast<int64_t>(prompt.size()), params.max_new_tokens, config));

  std::unique_ptr<engine::Engine> engine;
  if (f.device == "cpu") {
    DMOE_ASSIGN_OR_RETURN(engine, engine::Engine::Create({.model_dir = f.model_dir,
                                                          .kernels = f.kernels,
                                                          .num_threads = f.threads}));
  }

  const bool stream = !f.json && !f.visual;
  std::unique_ptr<model::StreamingDetokenizer> detok;
  if (tokenizer) detok = std::make_unique<model::StreamingDetokenizer>(*tokenizer, true);
  const bool tty = isatty(STDOUT_FILENO);
  DenoiseView view({.tty = tty, .width = TerminalColumns(STDOUT_FILENO)},
                   TokenTextOf(tokenizer.get()));
  std::string committed_text;
  auto observer = [&](size_t, engine::Sequence& s) {
    std::vector<int32_t> fresh = s.TakeNewTokens();
    if (detok && !fresh.empty()) committed_text += detok->Push(fresh);
    if (stream && detok) {
      std::cout << committed_text << std::flush;
      committed_text.clear();
    } else if (f.visual && params.mode == engine::DecodeMode::kDiffusion) {
      std::cout << view.Render({.forward = s.forwards(),
                                .block_start = s.denoised_block_start(),
                                .tokens = s.DenoisedBlock(),
                                .mask_id = s.params().mask_id,
                                .prompt_length = s.prompt_length()})
                << std::flush;
    }
  };
  engine::GenerationResult r;
  if (engine != nullptr) {
    DMOE_ASSIGN_OR_RETURN(auto results, engine->Generate({{prompt, params}}, observer));
    r = std::move(results[0]);
  } else {
    // A KV pool on the device for this one request (prompt + generation + one block).
    constexpr int64_t kPageTokens = 32;
    const int64_t tokens = static_cast<int64_t>(prompt.size()) + params.max_new_tokens +
                           params.block_length;
    const int64_t pages = (tokens + kPageTokens - 1) / kPageTokens + 1;
    DMOE_ASSIGN_OR_RETURN(auto device_model,
                          serve::InProcessModel::Create({.model_dir = f.model_dir,
                                                             .kv_page_tokens = kPageTokens,
                                                             .kv_max_pages = pages,
                                                             .device = "cuda",
                                                             .cuda_device = f.gpu}));
    DMOE_ASSIGN_OR_RETURN(r, GenerateWithExecutor(device_model->step_executor(), config, prompt,
                                                  params, observer));
  }
  std::string text = tokenizer ? tokenizer->Decode(r.ids, /*skip_special_tokens=*/true) : "";
  if (f.json) {
    nlohmann::json out = {{"ids", r.ids},
                          {"text", SanitizeUtf8(text)},
                          {"forwards", r.forwards},
                          {"tokens_per_forward", r.tokens_per_forward()},
                          {"edits", r.edits},
                          {"seconds", r.seconds},
                          {"finish_reason", engine::FinishReasonName(r.finish_reason)},
                          {"prompt_tokens", prompt.size()}};
    std::cout << out.dump() << std::endl;
  } else {
    if (f.visual) std::cout << view.Clear() << text;
    if (stream && detok) std::cout << committed_text << detok->Flush();
    if (!tokenizer) {
      for (size_t i = 0; i < r.ids.size(); ++i) std::cout << (i ? "," : "") << r.ids[i];
    }
    std::cout << std::endl;
    if (r.edits > 0) {
      std::fprintf(stderr, "[token editing: %lld edits, %lld re-masks]\n",
                   static_cast<long long>(r.edits), static_cast<long long>(r.remasks));
    }
    std::fprintf(stderr, "[%zu tokens, %lld forwards, TPF %.2f, %.1f tokens/s, finish: %s]\n",
                 r.ids.size(), static_cast<long long>(r.forwards), r.tokens_per_forward(),
                 r.seconds > 0 ? r.ids.size() / r.seconds : 0.0,
                 engine::FinishReasonName(r.finish_reason).c_str());
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterGenerateCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text with the single-process engine");
  cmd->add_option("--model", flags->model_dir, "Checkpoint directory (HF layout)")->required();
  AddPromptFlags(cmd, &flags->input);
  AddDecodingFlags(cmd, &flags->decoding);
  cmd->add_option("--mask-id", flags->mask_id, "Override the mask token id");
  cmd->add_option("--stop-ids", flags->stop_ids, "Override the stop token ids, e.g. 5,7");
  cmd->add_flag("--json", flags->json, "Print one JSON object: ids, text, forwards, ...");
  cmd->add_flag("--visual", flags->visual, "Show the block being denoised after every forward (masks \u2591, new commits highlighted)");
  cmd->add_option("--kernels", flags->kernels, "cpu (fast) or reference (naive)")
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "Compute threads (0 = all cores)");
  cmd->add_option("--device", flags->device,
                  "Where the forward runs: cpu, or cuda (one GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--gpu", flags->gpu, kGpuFlagHelp)->capture_default_str();
  cmd->callback([flags, exit_code] {
    absl::Status status = RunGenerate(*flags);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
