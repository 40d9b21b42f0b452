// One NCCL group's communicator id as the scheduler hands it out (Cluster.GetCommunicator):
// the scheduler side is scheduler/communicator_ids.h, the rank side cluster/communicator_client.h.
#ifndef DMOE_COMMON_COMMUNICATOR_ID_H_
#define DMOE_COMMON_COMMUNICATOR_ID_H_

#include <cstdint>
#include <string>

namespace dmoe {

struct CommunicatorId {
  std::string unique_id;    // ncclUniqueId's raw bytes
  uint64_t generation = 0;  // 1 for a group's first id
};

}  // namespace dmoe

#endif  // DMOE_COMMON_COMMUNICATOR_ID_H_
