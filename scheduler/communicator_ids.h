// The NCCL communicator ids the scheduler hands out (Cluster.GetCommunicator): one current
// unique id per named group, replaced when a rank reports that generation failed. The id
// itself comes from a factory: nccl::NewUniqueId in a build with NCCL (the scheduler's
// process is then the group's bootstrap root), otherwise FAILED_PRECONDITION. No NCCL header
// here, so the scheduler core builds without CUDA.
#ifndef DMOE_SCHEDULER_COMMUNICATOR_IDS_H_
#define DMOE_SCHEDULER_COMMUNICATOR_IDS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/communicator_id.h"

namespace dmoe::scheduler {

// Returns a fresh unique id (its raw bytes).
using UniqueIdFactory = std::function<absl::StatusOr<std::string>()>;

// nccl::NewUniqueId when this binary was built with NCCL; otherwise a factory answering
// FAILED_PRECONDITION "this scheduler was built without NCCL ...".
UniqueIdFactory DefaultUniqueIdFactory();

// Thread-safe.
class CommunicatorIds {
 public:
  // Groups beyond this are refused (RESOURCE_EXHAUSTED): ids are never forgotten.
  static constexpr size_t kMaxGroups = 4096;
  static constexpr size_t kMaxGroupName = 256;

  explicit CommunicatorIds(UniqueIdFactory factory) : factory_(std::move(factory)) {}

  // The group's current id, made on first use. failed_generation == the current generation
  // replaces it (a rank saw it fail); an older one returns the current id (another rank
  // already replaced it). INVALID_ARGUMENT for an empty or over-long group name or a
  // generation from the future; the factory's errors pass through.
  absl::StatusOr<CommunicatorId> Get(const std::string& group, uint64_t failed_generation)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const UniqueIdFactory factory_;
  absl::Mutex mu_;
  std::map<std::string, CommunicatorId> groups_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_COMMUNICATOR_IDS_H_
