// Expert load balancing, the driving half (docs/expert-balancing.md): every period, looks at
// the tokens routed per (layer, expert) over the membership's window, and when the active
// expert map's imbalance passes a bound (and the last change is old enough) plans a new map
// (PlanExpertMap) and stages it on the membership, which switches pods over without failing a
// call. Exports the load, imbalance and moves as Prometheus series.
#ifndef DMOE_SCHEDULER_EXPERT_REBALANCER_H_
#define DMOE_SCHEDULER_EXPERT_REBALANCER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "metrics/endpoint.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "scheduler/expert_balancer.h"
#include "scheduler/membership.h"

namespace dmoe::scheduler {

struct ExpertRebalancerOptions {
  ExpertPlanOptions plan{};
  // Rebalance when the active map's imbalance (Imbalance(): max over mean shard load, summed
  // over layers) over the window is above this.
  double imbalance_bound = 1.15;
  // At most one change per this long (each costs loads on the shards and a switch), the
  // first one this long after start at the earliest (the load window fills first).
  absl::Duration min_interval = absl::Seconds(30);
  // Too few tokens say nothing about the load: no decision below this many in the window.
  int64_t min_window_tokens = 20000;
  // Adopt a plan only when it lowers the imbalance by at least this much.
  double min_gain = 0.03;
  // How often the thread decides (Start); tests call Tick themselves.
  absl::Duration period = absl::Seconds(1);
  std::function<absl::Time()> clock = nullptr;  // null: absl::Now

  absl::Status Validate() const;
};

// What the last Tick saw and did (tests, logs).
struct RebalanceDecision {
  double active_imbalance = 1;  // the map attention pods route by, over the window
  double range_imbalance = 1;   // the range placement, over the same window
  double planned_imbalance = 0; // the plan's, when one was made
  bool staged = false;          // a new map was staged
  int64_t moves = 0;            // experts the staged map loads on shards outside their range
};

// Thread-safe.
class ExpertRebalancer {
 public:
  // `metrics.registry` may be null (no series).
  static absl::StatusOr<std::unique_ptr<ExpertRebalancer>> Create(
      const ExpertRebalancerOptions& options, Membership& membership,
      const metrics::ProcessMetrics& metrics);
  ~ExpertRebalancer();

  // Starts the thread that calls Tick every period; the destructor stops it.
  void Start() ABSL_LOCKS_EXCLUDED(mu_);
  // One decision now.
  RebalanceDecision Tick() ABSL_LOCKS_EXCLUDED(tick_mu_);

 private:
  ExpertRebalancer(const ExpertRebalancerOptions& options, Membership& membership,
                   const metrics::ProcessMetrics& metrics);
  absl::Time Now() const { return options_.clock ? options_.clock() : absl::Now(); }

  ExpertRebalancerOptions options_;
  Membership& membership_;
  metrics::ProcessMetrics metrics_;
  prometheus::Family<prometheus::Gauge>* shard_load_ = nullptr;
  prometheus::Family<prometheus::Gauge>* imbalance_ = nullptr;
  prometheus::Counter* rebalances_ = nullptr;
  prometheus::Counter* moves_ = nullptr;
  prometheus::Gauge* redundant_ = nullptr;

  absl::Mutex tick_mu_;
  absl::Time last_change_ ABSL_GUARDED_BY(tick_mu_) = absl::InfinitePast();
  std::set<std::string> shard_labels_ ABSL_GUARDED_BY(tick_mu_);

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_EXPERT_REBALANCER_H_
