#include "cluster/placement_proto.h"

#include <string>
#include <vector>

namespace dmoe::cluster {

void PlacementToProto(const Placement& placement, dmoe::v1::Placement* proto) {
  proto->set_version(placement.version);
  proto->set_complete(placement.complete);
  proto->set_num_experts(placement.num_experts);
  for (const ShardPlacement& s : placement.shards) {
    dmoe::v1::ExpertShard* shard = proto->add_shards();
    shard->set_expert_first(s.expert_first);
    shard->set_expert_last(s.expert_last);
    for (const std::string& r : s.replicas) shard->add_replicas(r);
  }
}

Placement PlacementFromProto(const dmoe::v1::Placement& proto) {
  Placement placement;
  placement.version = proto.version();
  placement.complete = proto.complete();
  placement.num_experts = proto.num_experts();
  for (const auto& s : proto.shards()) {
    placement.shards.push_back(
        {s.expert_first(), s.expert_last(),
         std::vector<std::string>(s.replicas().begin(), s.replicas().end())});
  }
  return placement;
}

}  // namespace dmoe::cluster
