// Expert balancing on the shard side (docs/expert-balancing.md): which experts outside its
// range a shard must have loaded under a placement, and applying that to its engine.
#ifndef DMOE_EXPERT_SERVICE_RESIDENT_EXPERTS_H_
#define DMOE_EXPERT_SERVICE_RESIDENT_EXPERTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "cluster/placement.h"
#include "expert_service/expert_engine.h"

namespace dmoe::expert {

// Per MoE layer index, the experts the shard with range [first, last) computes under any of
// `placement`'s maps (active, staged: load before the switch, previous: attention pods may
// still route by it), outside [first, last), sorted. Empty when the placement has no map or
// no shard with that range.
std::vector<std::vector<int32_t>> ExtraExpertsFor(const cluster::Placement& placement,
                                                  int64_t first, int64_t last);

// engine.SetResidentExperts(ExtraExpertsFor(placement, engine's range)): loads what the maps
// add, releases what none of them holds any longer. Its errors pass through.
absl::Status FollowPlacement(ExpertEngine& engine, const cluster::Placement& placement);

}  // namespace dmoe::expert

#endif  // DMOE_EXPERT_SERVICE_RESIDENT_EXPERTS_H_
