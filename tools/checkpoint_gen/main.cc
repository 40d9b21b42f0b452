// dmoe-make-checkpoint: writes a random-weight LLaDA2.0 / Ling 2.0 checkpoint.
//
//   dmoe-make-checkpoint --out /tmp/tiny --preset tiny
//   dmoe-make-checkpoint --out /tmp/mini --preset bench-mini --shards 4 --seed 7
//
// Prints one summary line; errors go to stderr with exit code 2.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "common/dtype.h"
#include "model/checkpoint.h"
#include "tools/checkpoint_gen/random_checkpoint.h"

namespace {

constexpr int kErrorExit = 2;

int Fail(const std::string& message) {
  std::cerr << "dmoe-make-checkpoint: " << message << "\n";
  return kErrorExit;
}

std::string HumanCount(double n, const char* unit) {
  if (n >= 1e9) return absl::StrFormat("%.2f G%s", n / 1e9, unit);
  if (n >= 1e6) return absl::StrFormat("%.2f M%s", n / 1e6, unit);
  if (n >= 1e3) return absl::StrFormat("%.1f K%s", n / 1e3, unit);
  return absl::StrFormat("%.0f %s", n, unit);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Writes a random-weight LLaDA2.0 / Ling 2.0 checkpoint (config.json, "
               "safetensors, tokenizer files) in the Hugging Face layout."};
  std::string out;
  std::string preset = "tiny";
  std::string kind;
  std::string dtype;
  app.add_option("--out", out, "Output directory (created; an earlier checkpoint is replaced)")
      ->required();
  app.add_option("--preset", preset, "tiny | bench-mini")->capture_default_str();
  app.add_option("--kind", kind, "diffusion (LLaDA2MoeModelLM) | ar (BailingMoeV2ForCausalLM)");
  app.add_option("--dtype", dtype, "bf16 | f16 | f32 (router weights stay f32)");

  // Everything else overrides the preset only when given: each flag is bound to a scratch
  // variable and applied after parsing if it appeared.
  struct Override {
    CLI::Option* option;
    std::function<void(dmoe::tools::RandomCheckpointSpec&)> apply;
  };
  std::vector<Override> overrides;
  std::vector<std::unique_ptr<int64_t>> ints;
  std::vector<std::unique_ptr<double>> doubles;
  auto int_flag = [&](const char* name, const char* help,
                      int64_t dmoe::tools::RandomCheckpointSpec::*field) {
    ints.push_back(std::make_unique<int64_t>(0));
    int64_t* value = ints.back().get();
    overrides.push_back({app.add_option(name, *value, help),
                         [value, field](auto& spec) { spec.*field = *value; }});
  };
  auto double_flag = [&](const char* name, const char* help,
                         double dmoe::tools::RandomCheckpointSpec::*field) {
    doubles.push_back(std::make_unique<double>(0.0));
    double* value = doubles.back().get();
    overrides.push_back({app.add_option(name, *value, help),
                         [value, field](auto& spec) { spec.*field = *value; }});
  };
  using Spec = dmoe::tools::RandomCheckpointSpec;
  uint64_t seed = 0;
  int shards = 1;
  std::string tokenizer_dir;
  bool no_tokenizer = false;
  auto* seed_opt = app.add_option("--seed", seed, "PRNG seed (default 0)");
  auto* shards_opt = app.add_option("--shards", shards, "1: model.safetensors; N: index + N shards");
  auto* tokenizer_opt =
      app.add_option("--tokenizer-dir", tokenizer_dir,
                     "Copy tokenizer files from here (default: tools/data/tiny_tokenizer)");
  app.add_flag("--no-tokenizer", no_tokenizer, "Copy no tokenizer files");
  double_flag("--lm-head-std", "lm_head.weight std (0: 1/sqrt(hidden)); logit std ~ this * sqrt(hidden)",
              &Spec::lm_head_std);
  double_flag("--init-std", "Linear weight std (0: 1/sqrt(fan_in))", &Spec::init_std);
  double_flag("--embedding-std", "word_embeddings std", &Spec::embedding_std);
  double_flag("--norm-std", "RMSNorm weights are 1 + N(0, this^2)", &Spec::norm_std);
  double_flag("--expert-bias-std", "mlp.gate.expert_bias std", &Spec::expert_bias_std);
  int_flag("--hot-experts", "Skewed routing: this many experts per MoE layer get --hot-expert-bias",
           &Spec::hot_experts);
  double_flag("--hot-expert-bias", "Added to the hot experts' router expert_bias (e.g. 0.3)",
              &Spec::hot_expert_bias);
  int_flag("--hot-expert-first", "First hot expert of the first MoE layer", &Spec::hot_expert_first);
  int_flag("--hot-expert-stride", "The hot set moves by this many experts per MoE layer",
           &Spec::hot_expert_stride);
  int_flag("--vocab", "vocab_size", &Spec::vocab_size);
  int_flag("--hidden", "hidden_size", &Spec::hidden_size);
  int_flag("--layers", "num_hidden_layers", &Spec::num_hidden_layers);
  int_flag("--heads", "num_attention_heads", &Spec::num_attention_heads);
  int_flag("--kv-heads", "num_key_value_heads", &Spec::num_key_value_heads);
  int_flag("--head-dim", "head_dim", &Spec::head_dim);
  int_flag("--intermediate", "intermediate_size (dense layers)", &Spec::intermediate_size);
  int_flag("--moe-intermediate", "moe_intermediate_size", &Spec::moe_intermediate_size);
  int_flag("--experts", "num_experts", &Spec::num_experts);
  int_flag("--experts-per-tok", "num_experts_per_tok", &Spec::num_experts_per_tok);
  int_flag("--shared-experts", "num_shared_experts", &Spec::num_shared_experts);
  int_flag("--groups", "n_group", &Spec::n_group);
  int_flag("--topk-groups", "topk_group", &Spec::topk_group);
  int_flag("--dense-layers", "first_k_dense_replace", &Spec::first_k_dense_replace);
  int_flag("--max-positions", "max_position_embeddings", &Spec::max_position_embeddings);
  double_flag("--rope-theta", "rope_theta", &Spec::rope_theta);
  double_flag("--partial-rotary-factor", "partial_rotary_factor", &Spec::partial_rotary_factor);
  double_flag("--routed-scaling-factor", "routed_scaling_factor", &Spec::routed_scaling_factor);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return Fail(e.what());
  }

  absl::StatusOr<Spec> preset_spec = dmoe::tools::RandomCheckpointPreset(preset);
  if (!preset_spec.ok()) return Fail(std::string(preset_spec.status().message()));
  Spec spec = *preset_spec;
  if (!kind.empty()) {
    if (kind == "diffusion") {
      spec.kind = dmoe::model::ModelKind::kBlockDiffusion;
    } else if (kind == "ar") {
      spec.kind = dmoe::model::ModelKind::kAutoregressive;
    } else {
      return Fail("--kind must be 'diffusion' or 'ar', got '" + kind + "'");
    }
  }
  if (!dtype.empty()) {
    absl::StatusOr<dmoe::DType> parsed = dmoe::ParseDType(dtype);
    if (!parsed.ok()) return Fail("--dtype: " + std::string(parsed.status().message()));
    spec.dtype = *parsed;
  }
  if (seed_opt->count() > 0) spec.seed = seed;
  if (shards_opt->count() > 0) spec.num_shards = shards;
  if (tokenizer_opt->count() > 0) spec.tokenizer_dir = tokenizer_dir;
  if (no_tokenizer) spec.tokenizer_dir.clear();
  for (const Override& o : overrides) {
    if (o.option->count() > 0) o.apply(spec);
  }

  const auto start = std::chrono::steady_clock::now();
  absl::Status status = dmoe::tools::WriteRandomCheckpoint(spec, out);
  if (!status.ok()) return Fail(status.ToString());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Re-open what was written: checks it and gives the numbers for the summary.
  absl::StatusOr<std::unique_ptr<dmoe::model::Checkpoint>> ckpt =
      dmoe::model::Checkpoint::Open(out);
  if (!ckpt.ok()) return Fail("wrote an unreadable checkpoint: " + ckpt.status().ToString());
  const dmoe::model::ModelConfig& c = (*ckpt)->config();
  std::printf(
      "wrote %s %s checkpoint to %s: %lld layers, hidden %lld, %lld experts (top-%lld), vocab "
      "%lld, %s, %s params (%s active), %s in %d file(s), seed %llu, %.2f s\n",
      preset.c_str(), spec.kind == dmoe::model::ModelKind::kBlockDiffusion ? "diffusion" : "ar",
      out.c_str(), static_cast<long long>(c.num_hidden_layers),
      static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_experts),
      static_cast<long long>(c.num_experts_per_tok), static_cast<long long>(c.vocab_size),
      std::string(dmoe::DTypeName(spec.dtype)).c_str(),
      HumanCount(static_cast<double>(c.TotalParameters()), "").c_str(),
      HumanCount(static_cast<double>(c.ActiveParameters()), "").c_str(),
      HumanCount(static_cast<double>((*ckpt)->TotalTensorBytes()), "B").c_str(), spec.num_shards,
      static_cast<unsigned long long>(spec.seed), seconds);
  return 0;
}
