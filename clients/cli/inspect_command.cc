// dmoe inspect: what a checkpoint is, how big, and what a token costs.
#include <cstdio>
#include <memory>

#include "absl/strings/str_format.h"
#include "clients/cli/cli_common.h"
#include "clients/cli/commands.h"
#include "common/status_macros.h"
#include "model/checkpoint.h"

namespace dmoe::cli {
namespace {

std::string Human(double count, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (count >= 1000 && i < 4) {
    count /= 1000;
    ++i;
  }
  return absl::StrFormat("%.2f %s%s", count, prefixes[i], unit);
}

absl::Status RunInspect(const std::string& dir) {
  DMOE_ASSIGN_OR_RETURN(auto checkpoint, model::Checkpoint::Open(dir));
  const model::ModelConfig& c = checkpoint->config();
  const bool diffusion = c.kind == model::ModelKind::kBlockDiffusion;
  std::printf("model          %s (%s, %s)\n", dir.c_str(), c.architecture.c_str(),
              diffusion ? "block diffusion" : "autoregressive");
  std::printf("layers         %lld (%lld dense, %lld MoE)\n", (long long)c.num_hidden_layers,
              (long long)c.first_k_dense_replace,
              (long long)(c.num_hidden_layers - c.first_k_dense_replace));
  std::printf("hidden         %lld; heads %lld q / %lld kv x %lld; rotary dims %lld; theta %g\n",
              (long long)c.hidden_size, (long long)c.num_attention_heads,
              (long long)c.num_key_value_heads, (long long)c.head_dim, (long long)c.rotary_dim,
              c.rope_theta);
  std::printf("experts        %lld routed (top-%lld, %lld groups, top-%lld groups) + %lld shared; "
              "width %lld; dense width %lld\n",
              (long long)c.num_experts, (long long)c.num_experts_per_tok, (long long)c.n_group,
              (long long)c.topk_group, (long long)c.num_shared_experts,
              (long long)c.moe_intermediate_size, (long long)c.intermediate_size);
  std::printf("vocab          %lld; block length %lld; max positions %lld\n",
              (long long)c.vocab_size, (long long)c.block_length,
              (long long)c.max_position_embeddings);
  std::printf("parameters     %s total, %s active per token\n",
              Human(static_cast<double>(c.TotalParameters()), "").c_str(),
              Human(static_cast<double>(c.ActiveParameters()), "").c_str());
  std::printf("weights        %s on disk (%zu tensors, %s)\n",
              Human(static_cast<double>(checkpoint->TotalTensorBytes()), "B").c_str(),
              checkpoint->TensorNames().size(), std::string(DTypeName(c.torch_dtype)).c_str());
  const double kv_per_token = 2.0 * c.num_hidden_layers * c.kv_width() * sizeof(float);
  std::printf("KV cache       %s per token (F32 on the CPU backend)\n",
              Human(kv_per_token, "B").c_str());
  return absl::OkStatus();
}

}  // namespace

void RegisterInspectCommand(CLI::App& app, int* exit_code) {
  auto dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect", "Summarise a checkpoint");
  cmd->add_option("--model", *dir, "Checkpoint directory")->required();
  cmd->callback([dir, exit_code] {
    absl::Status status = RunInspect(*dir);
    *exit_code = status.ok() ? 0 : ReportError(status);
  });
}

}  // namespace dmoe::cli
