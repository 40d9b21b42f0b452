// DefaultUniqueIdFactory in a build without NCCL (DMOE_ENABLE_NCCL=OFF).
#include "scheduler/communicator_ids.h"

namespace dmoe::scheduler {

UniqueIdFactory DefaultUniqueIdFactory() {
  return []() -> absl::StatusOr<std::string> {
    return absl::FailedPreconditionError(
        "this scheduler was built without NCCL (DMOE_ENABLE_NCCL=OFF): it cannot hand out "
        "NCCL communicator ids");
  };
}

}  // namespace dmoe::scheduler
