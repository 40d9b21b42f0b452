// The rank side of Cluster.GetCommunicator: a pod that joins an NCCL group asks the scheduler
// for the group's unique id (and, after its communicator failed, for a fresh one), then
// creates its nccl::NcclCommunicator with it.
#ifndef DMOE_CLUSTER_COMMUNICATOR_CLIENT_H_
#define DMOE_CLUSTER_COMMUNICATOR_CLIENT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/communicator_id.h"

namespace dmoe::cluster {

// One GetCommunicator call to the scheduler at `scheduler_address` (host:port). The
// scheduler's status passes through, prefixed with the address; UNAVAILABLE /
// DEADLINE_EXCEEDED when it cannot be reached by `deadline`.
absl::StatusOr<CommunicatorId> FetchCommunicatorId(const std::string& scheduler_address,
                                                   const std::string& group,
                                                   uint64_t failed_generation,
                                                   absl::Time deadline);

}  // namespace dmoe::cluster

#endif  // DMOE_CLUSTER_COMMUNICATOR_CLIENT_H_
