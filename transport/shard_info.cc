#include "transport/shard_info.h"

#include "absl/strings/str_cat.h"

namespace dmoe::transport {
namespace {

template <typename T>
absl::Status Mismatch(std::string_view field, const T& shard, const T& expected) {
  return absl::FailedPreconditionError(
      absl::StrCat(absl::string_view(field.data(), field.size()), ": shard has ", shard,
                   ", expected ", expected));
}

}  // namespace

absl::Status CheckShardCompatible(const ShardInfo& info, const model::ModelConfig& config,
                                  int64_t expert_first, int64_t expert_last,
                                  std::string_view expected_fingerprint) {
  if (info.model_type != config.model_type) {
    return Mismatch("model_type", info.model_type, config.model_type);
  }
  if (info.hidden_size != config.hidden_size) {
    return Mismatch("hidden_size", info.hidden_size, config.hidden_size);
  }
  if (info.num_hidden_layers != config.num_hidden_layers) {
    return Mismatch("num_hidden_layers", info.num_hidden_layers, config.num_hidden_layers);
  }
  if (info.first_moe_layer != config.first_k_dense_replace) {
    return Mismatch("first_moe_layer", info.first_moe_layer, config.first_k_dense_replace);
  }
  if (info.num_experts != config.num_experts) {
    return Mismatch("num_experts", info.num_experts, config.num_experts);
  }
  if (info.num_experts_per_tok != config.num_experts_per_tok) {
    return Mismatch("num_experts_per_tok", info.num_experts_per_tok, config.num_experts_per_tok);
  }
  if (info.moe_intermediate_size != config.moe_intermediate_size) {
    return Mismatch("moe_intermediate_size", info.moe_intermediate_size,
                    config.moe_intermediate_size);
  }
  if (expert_first < info.expert_first || expert_last > info.expert_last) {
    return absl::FailedPreconditionError(absl::StrCat(
        "expert range: shard serves [", info.expert_first, ", ", info.expert_last,
        "), expected it to contain [", expert_first, ", ", expert_last, ")"));
  }
  if (!expected_fingerprint.empty() && info.config_fingerprint != expected_fingerprint) {
    return Mismatch("config_fingerprint", info.config_fingerprint,
                    std::string(expected_fingerprint));
  }
  return absl::OkStatus();
}

}  // namespace dmoe::transport
