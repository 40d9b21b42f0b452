// The scheduler process (dmoe-scheduler): the public Generation API of one model version over
// the cluster's attention replicas, and the Cluster service those replicas and the expert
// shards register with (membership, placement, NCCL communicator ids). It computes nothing:
// forwards run on the attention replicas (RemoteAttentionExecutor), which reach the experts.
#ifndef DMOE_SCHEDULER_SCHEDULER_SERVER_H_
#define DMOE_SCHEDULER_SCHEDULER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "metrics/endpoint.h"
#include "model/config.h"
#include "scheduler/cluster_metrics.h"
#include "scheduler/cluster_server.h"
#include "scheduler/expert_rebalancer.h"
#include "scheduler/generation_endpoint.h"
#include "scheduler/membership.h"
#include "scheduler/remote_attention_executor.h"

namespace dmoe::scheduler {

struct SchedulerServerOptions {
  // The public API: model directory (config.json, tokenizer.json), address, batching, metrics.
  GenerationEndpointOptions api{};
  // Pods heartbeat this often and drop out after `lease` without one.
  absl::Duration heartbeat_period = absl::Seconds(1);
  absl::Duration lease = absl::Seconds(10);
  // One Step call to an attention replica: a replica that does not answer in time (stopped,
  // overloaded, partitioned) is treated as failed for that step, its sequences re-prefilled on
  // the others; it rejoins by registering again when it recovers.
  absl::Duration step_timeout = absl::Seconds(60);
  // Expert load balancing (docs/expert-balancing.md): off keeps the range placement.
  bool expert_balancing = false;
  ExpertRebalancerOptions balancer{};
  // Tokens per (layer, expert) are remembered this long (the balancer's load window).
  absl::Duration load_window = absl::Seconds(60);
};

// Thread-safe.
class SchedulerServer {
 public:
  // Reads config.json (NOT_FOUND / INVALID_ARGUMENT naming the file) and starts serving; the
  // API's errors (GenerationEndpoint::Start) pass through.
  static absl::StatusOr<std::unique_ptr<SchedulerServer>> Start(
      const SchedulerServerOptions& options);

  const std::string& address() const { return api_->address(); }
  int port() const { return api_->port(); }
  // The /metrics endpoint's bound address; empty without one.
  std::string metrics_address() const {
    return metrics_.endpoint ? metrics_.endpoint->address() : "";
  }
  GenerationEndpoint& api() { return *api_; }
  Scheduler& scheduler() { return api_->scheduler(); }
  Membership& membership() { return *membership_; }

  // GenerationEndpoint::Drain.
  void Drain(absl::Duration timeout) { api_->Drain(timeout); }

 private:
  SchedulerServer() = default;

  metrics::ServedMetrics metrics_;
  std::unique_ptr<model::ModelConfig> config_;
  std::unique_ptr<Membership> membership_;
  std::unique_ptr<ClusterServer> cluster_service_;
  std::unique_ptr<ClusterMetrics> cluster_metrics_;
  std::unique_ptr<ExpertRebalancer> rebalancer_;
  std::unique_ptr<RemoteAttentionExecutor> remote_;
  std::unique_ptr<GenerationEndpoint> api_;  // destroyed first: it uses everything above
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_SCHEDULER_SERVER_H_
