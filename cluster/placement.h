// The expert placement every pod agrees on: which expert shards exist and which pods serve
// each. The scheduler derives it from membership (scheduler/membership.h) and pushes it;
// attention replicas route by it. Plain data, no gRPC (cluster/placement_proto.h converts).
#ifndef DMOE_CLUSTER_PLACEMENT_H_
#define DMOE_CLUSTER_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

namespace dmoe::cluster {

struct ShardPlacement {
  int64_t expert_first = 0;
  int64_t expert_last = 0;
  std::vector<std::string> replicas;  // sorted addresses
};

// Which shards compute each expert, per MoE layer: map[i][e] holds the indices (into
// Placement::shards, sorted ascending, at least one) of the shards that compute expert e of
// layer first_moe_layer + i. An empty map is the range placement: every expert on the shard
// whose range contains it (docs/expert-balancing.md).
using ExpertMap = std::vector<std::vector<std::vector<int32_t>>>;

struct Placement {
  uint64_t version = 0;
  std::vector<ShardPlacement> shards;  // sorted by expert_first, non-overlapping
  bool complete = false;               // shards cover [0, num_experts)
  int64_t num_experts = 0;
  // Expert balancing (see dmoe.v1.Placement): the map attention pods route by; a shard always
  // holds its own range and up to redundant_slots other experts per layer.
  int64_t first_moe_layer = 0;
  ExpertMap layers{};
  int64_t redundant_slots = 0;
  // For expert pods: a map being staged (load before the switch) and the map attention pods
  // may still route by (release after). Empty when none.
  ExpertMap staged_layers{};
  uint64_t staged_version = 0;
  ExpertMap previous_layers{};
};

// The experts shard `shard` computes under `map`, per MoE layer ([layer index] -> sorted
// expert ids), its own range included only where the map sends it there. Empty for an empty
// map.
std::vector<std::vector<int32_t>> ExpertsOfShard(const ExpertMap& map, int32_t shard);

// Index of the shard whose range is exactly [first, last) in `placement`, or -1.
int32_t FindShard(const Placement& placement, int64_t first, int64_t last);

}  // namespace dmoe::cluster

#endif  // DMOE_CLUSTER_PLACEMENT_H_
