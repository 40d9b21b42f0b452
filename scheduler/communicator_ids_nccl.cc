// DefaultUniqueIdFactory in a build with NCCL.
#include "common/nccl/nccl_communicator.h"
#include "scheduler/communicator_ids.h"

namespace dmoe::scheduler {

UniqueIdFactory DefaultUniqueIdFactory() { return [] { return nccl::NewUniqueId(); }; }

}  // namespace dmoe::scheduler
