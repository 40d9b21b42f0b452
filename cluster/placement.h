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

struct Placement {
  uint64_t version = 0;
  std::vector<ShardPlacement> shards;  // sorted by expert_first, non-overlapping
  bool complete = false;               // shards cover [0, num_experts)
  int64_t num_experts = 0;
};

}  // namespace dmoe::cluster

#endif  // DMOE_CLUSTER_PLACEMENT_H_
