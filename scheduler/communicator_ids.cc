#include "scheduler/communicator_ids.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace dmoe::scheduler {

absl::StatusOr<CommunicatorId> CommunicatorIds::Get(const std::string& group,
                                                    uint64_t failed_generation) {
  if (group.empty() || group.size() > kMaxGroupName) {
    return absl::InvalidArgumentError(absl::StrCat("group: must be 1 to ", kMaxGroupName,
                                                   " characters, got ", group.size()));
  }
  absl::MutexLock lock(&mu_);
  auto it = groups_.find(group);
  const uint64_t current = it == groups_.end() ? 0 : it->second.generation;
  if (failed_generation > current) {
    return absl::InvalidArgumentError(
        absl::StrCat("failed_generation: ", failed_generation, " was never handed out for group '",
                     group, "' (current generation ", current, ")"));
  }
  if (it != groups_.end() && failed_generation != current) return it->second;
  if (it == groups_.end() && groups_.size() >= kMaxGroups) {
    return absl::ResourceExhaustedError(
        absl::StrCat("too many communicator groups (", kMaxGroups, ")"));
  }
  // New group, or the current generation failed: a fresh id, one generation on.
  DMOE_ASSIGN_OR_RETURN(std::string id, factory_());
  CommunicatorId& entry = groups_[group];
  entry.unique_id = std::move(id);
  entry.generation = current + 1;
  if (current > 0) {
    DMOE_LOG(WARNING) << "communicator '" << group << "': generation " << current
                      << " failed; handing out generation " << entry.generation;
  }
  return entry;
}

}  // namespace dmoe::scheduler
