// The attention replica's view of the cluster's expert placement: the latest placement from
// the scheduler (set by the membership agent's thread) turned into ShardedExpertExecutors,
// one per micro-batch lane, over gRPC transports shared by address.
#ifndef DMOE_ATTENTION_SERVICE_CLUSTER_EXPERTS_H_
#define DMOE_ATTENTION_SERVICE_CLUSTER_EXPERTS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "model/expert_executor.h"
#include "cluster/placement.h"
#include "transport/sharded_expert_executor.h"

namespace dmoe::attention {

// Thread-safe.
class ClusterExperts {
 public:
  // `metrics`: routing / dispatch series of every lane's executor; may be null.
  explicit ClusterExperts(int64_t num_experts,
                          std::shared_ptr<transport::DispatchMetrics> metrics = nullptr)
      : num_experts_(num_experts), metrics_(std::move(metrics)) {}

  // Called with every new placement version (the membership agent's callback).
  void Update(const cluster::Placement& placement) ABSL_LOCKS_EXCLUDED(mu_);
  // The placement to use now; version 0 and no shards until a complete one arrived.
  transport::ExpertPlacement Current() ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t version() ABSL_LOCKS_EXCLUDED(mu_);

  // An executor for one lane: before each layer it switches to the newest placement.
  std::unique_ptr<model::ExpertExecutor> NewExecutor();
  int64_t num_experts() const { return num_experts_; }
  // --expert-transport nccl: every new expert pod's gRPC transport goes through `wrap`
  // (transport::NcclPeering::Wrap). Call before the first placement arrives.
  void SetTransportWrapper(std::function<transport::ExpertTransportSharedPtr(
                               transport::ExpertTransportSharedPtr)> wrap) {
    wrap_ = std::move(wrap);
  }
  const std::shared_ptr<transport::DispatchMetrics>& metrics() const { return metrics_; }

 private:
  int64_t num_experts_;
  std::function<transport::ExpertTransportSharedPtr(transport::ExpertTransportSharedPtr)> wrap_;
  std::shared_ptr<transport::DispatchMetrics> metrics_;
  absl::Mutex mu_;
  transport::ExpertPlacement current_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, transport::ExpertTransportSharedPtr> transports_  // by address
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dmoe::attention

#endif  // DMOE_ATTENTION_SERVICE_CLUSTER_EXPERTS_H_
