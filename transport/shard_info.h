// What an expert shard serves (dmoe.v1.GetShardInfoResponse in domain form) and the check an
// attention replica runs before routing tokens to it.
#ifndef DMOE_TRANSPORT_SHARD_INFO_H_
#define DMOE_TRANSPORT_SHARD_INFO_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"

namespace dmoe::transport {

struct ShardInfo {
  std::string model_name;        // operator-chosen (default: checkpoint directory name)
  std::string model_type;        // config.json model_type
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t first_moe_layer = 0;   // layers [first_moe_layer, num_hidden_layers) are MoE
  int64_t num_experts = 0;       // per MoE layer, whole model
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t expert_first = 0;      // this shard serves [expert_first, expert_last)
  int64_t expert_last = 0;
  std::string weight_dtype;      // "BF16", "F16", "F32"
  std::string config_fingerprint;  // model::ConfigFingerprint(config.json)
};

// Whether `info` can serve experts [expert_first, expert_last) of a model with `config`:
// same model_type and shapes (hidden size, layers, first MoE layer, experts, top-k, expert
// width) and a range that contains [expert_first, expert_last). `expected_fingerprint` is
// compared too unless empty. FAILED_PRECONDITION naming the first mismatching field,
// "<field>: shard has X, expected Y".
absl::Status CheckShardCompatible(const ShardInfo& info, const model::ModelConfig& config,
                                  int64_t expert_first, int64_t expert_last,
                                  std::string_view expected_fingerprint = {});

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_SHARD_INFO_H_
