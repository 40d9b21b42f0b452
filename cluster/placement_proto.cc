#include "cluster/placement_proto.h"

#include <string>
#include <vector>

namespace dmoe::cluster {
namespace {

void MapToProto(const ExpertMap& map,
                google::protobuf::RepeatedPtrField<dmoe::v1::LayerExperts>* proto) {
  for (const auto& layer : map) {
    dmoe::v1::LayerExperts* out = proto->Add();
    for (const auto& holders : layer) {
      out->add_experts()->mutable_shards()->Add(holders.begin(), holders.end());
    }
  }
}

ExpertMap MapFromProto(const google::protobuf::RepeatedPtrField<dmoe::v1::LayerExperts>& proto) {
  ExpertMap map;
  for (const auto& layer : proto) {
    auto& out = map.emplace_back();
    for (const auto& holders : layer.experts()) {
      out.emplace_back(holders.shards().begin(), holders.shards().end());
    }
  }
  return map;
}

}  // namespace

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
  proto->set_first_moe_layer(placement.first_moe_layer);
  proto->set_redundant_slots(placement.redundant_slots);
  MapToProto(placement.layers, proto->mutable_layers());
  MapToProto(placement.staged_layers, proto->mutable_staged_layers());
  proto->set_staged_version(placement.staged_version);
  MapToProto(placement.previous_layers, proto->mutable_previous_layers());
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
  placement.first_moe_layer = proto.first_moe_layer();
  placement.redundant_slots = proto.redundant_slots();
  placement.layers = MapFromProto(proto.layers());
  placement.staged_layers = MapFromProto(proto.staged_layers());
  placement.staged_version = proto.staged_version();
  placement.previous_layers = MapFromProto(proto.previous_layers());
  return placement;
}

}  // namespace dmoe::cluster
