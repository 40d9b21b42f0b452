// Placement <-> dmoe.v1.Placement (the Cluster service's GetPlacement answer).
#ifndef DMOE_CLUSTER_PLACEMENT_PROTO_H_
#define DMOE_CLUSTER_PLACEMENT_PROTO_H_

#include "cluster/placement.h"
#include "proto/dmoe/v1/cluster.pb.h"

namespace dmoe::cluster {

void PlacementToProto(const Placement& placement, dmoe::v1::Placement* proto);
Placement PlacementFromProto(const dmoe::v1::Placement& proto);

}  // namespace dmoe::cluster

#endif  // DMOE_CLUSTER_PLACEMENT_PROTO_H_
