// The scheduler's view of the cluster as Prometheus series: live members by role, the expert
// placement version and changes, and per expert shard its replicas, busy ratio and desired
// replica count (what the expert HPA scales on; deploy/k8s). A thread refreshes them.
#ifndef DMOE_SCHEDULER_CLUSTER_METRICS_H_
#define DMOE_SCHEDULER_CLUSTER_METRICS_H_

#include <map>
#include <set>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "metrics/endpoint.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "scheduler/membership.h"

namespace dmoe::scheduler {

class ClusterMetrics {
 public:
  // Starts refreshing every `period`; stops in the destructor.
  ClusterMetrics(const metrics::ProcessMetrics& metrics, Membership& membership,
                 absl::Duration period = absl::Seconds(1));
  ~ClusterMetrics();

  // One refresh now (also what the thread runs).
  void Refresh();

 private:
  metrics::ProcessMetrics metrics_;
  Membership& membership_;
  prometheus::Family<prometheus::Gauge>& members_;
  prometheus::Gauge& placement_version_;
  prometheus::Counter& placement_changes_;
  prometheus::Family<prometheus::Gauge>& replicas_;
  prometheus::Family<prometheus::Gauge>& busy_;
  prometheus::Family<prometheus::Gauge>& desired_;
  uint64_t last_version_ = 0;
  std::set<std::string> shards_;  // shard labels exported, to remove the ones that left

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_CLUSTER_METRICS_H_
