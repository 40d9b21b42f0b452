// The attention replica's view of the cluster's expert placement: the latest placement from
// the scheduler (set by the membership agent's thread) turned into ShardedExpertExecutors,
// one per micro-batch lane, over gRPC transports shared by address.
#ifndef DMOE_ATTENTION_SERVICE_CLUSTER_EXPERTS_H_
#define DMOE_ATTENTION_SERVICE_CLUSTER_EXPERTS_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

  // An executor for one lane: at the start of each step (SetStepDeadline) it switches to the
  // newest placement, so a step in flight finishes on the placement it started with.
  std::unique_ptr<model::ExpertExecutor> NewExecutor();

  // Expert balancing: count the tokens routed per (MoE layer, expert) from now on, for the
  // scheduler's load window (docs/expert-balancing.md). Call before the first step.
  void EnableLoadCounting(int64_t first_moe_layer, int64_t num_moe_layers);
  // The counts since the previous call ([layer - first_moe_layer][expert] flattened), then
  // zero; empty when counting is off or nothing was routed.
  std::vector<int64_t> TakeExpertTokens();
  // Called by the lanes' executors with each layer's routing.
  void CountRouting(int64_t layer, const std::vector<int32_t>& experts);
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
  // Rows in flight to each shard, by range "first-last", shared by every lane's executor and
  // kept across placement versions (load-aware dispatch).
  std::map<std::string, std::shared_ptr<std::atomic<int64_t>>> outstanding_ ABSL_GUARDED_BY(mu_);
  // Load counting (EnableLoadCounting before the first step; then read-only but the atomics).
  int64_t first_moe_layer_ = 0;
  int64_t num_moe_layers_ = 0;
  std::unique_ptr<std::atomic<int64_t>[]> tokens_;
};

}  // namespace dmoe::attention

#endif  // DMOE_ATTENTION_SERVICE_CLUSTER_EXPERTS_H_
