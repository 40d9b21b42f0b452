// StepExecutor over the attention replicas of a cluster (gRPC AttentionService). Each
// sequence is placed on one live replica (least loaded at first use) and stays there; the
// step's sequences are sent to their replicas concurrently. A replica that fails a call is
// reported to the membership and its sequences are re-placed: the step returns ABORTED so the
// scheduler re-prefills them from the committed tokens it holds (nothing is lost).
#ifndef DMOE_SCHEDULER_REMOTE_ATTENTION_EXECUTOR_H_
#define DMOE_SCHEDULER_REMOTE_ATTENTION_EXECUTOR_H_

#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/dmoe/v1/attention.grpc.pb.h"
#include "scheduler/membership.h"
#include "scheduler/step_executor.h"

namespace dmoe::scheduler {

struct RemoteAttentionExecutorOptions {
  absl::Duration step_timeout = absl::Seconds(60);  // one Step RPC
  int64_t default_kv_pages = 8192;                  // per replica, until GetInfo answers
};

// Thread-compatible for Execute (the scheduler's step thread); Release may be called from it too.
class RemoteAttentionExecutor : public StepExecutor {
 public:
  RemoteAttentionExecutor(const RemoteAttentionExecutorOptions& options, Membership& membership);

  absl::StatusOr<std::vector<engine::Proposal>> Execute(
      const std::vector<SequenceStep>& steps) override ABSL_LOCKS_EXCLUDED(mu_);
  // After ABORTED: the failed replica's sequences lost their caches; the others' proposals
  // stand (or, when sequences moved before any call, the others did not run).
  std::optional<PartialStep> TakePartialStep() override ABSL_LOCKS_EXCLUDED(mu_);
  void Release(const std::vector<std::string>& sequence_ids) override ABSL_LOCKS_EXCLUDED(mu_);
  int64_t KvPagesCapacity() override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  dmoe::v1::AttentionService::Stub* StubFor(const std::string& address)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Picks a live replica for a new sequence: the one holding the fewest sequences.
  absl::StatusOr<std::string> PlaceNew(const std::vector<std::string>& live)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RemoteAttentionExecutorOptions options_;
  Membership& membership_;
  absl::Mutex mu_;
  // Stubs are never erased, so a pointer from StubFor stays valid after mu_ is released.
  std::map<std::string, std::unique_ptr<dmoe::v1::AttentionService::Stub>> stubs_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> placement_  // sequence id -> replica address
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> replica_kv_pages_ ABSL_GUARDED_BY(mu_);
  std::optional<PartialStep> partial_ ABSL_GUARDED_BY(mu_);  // the last ABORTED Execute's
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_REMOTE_ATTENTION_EXECUTOR_H_
