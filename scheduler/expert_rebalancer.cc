#include "scheduler/expert_rebalancer.h"

#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "metrics/catalog.h"

namespace dmoe::scheduler {

absl::Status ExpertRebalancerOptions::Validate() const {
  DMOE_RETURN_IF_ERROR(plan.Validate());
  if (imbalance_bound < 1) {
    return absl::InvalidArgumentError(absl::StrCat("imbalance_bound: ", imbalance_bound, " < 1"));
  }
  if (min_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("min_interval: must not be negative");
  }
  if (period <= absl::ZeroDuration()) return absl::InvalidArgumentError("period: must be positive");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ExpertRebalancer>> ExpertRebalancer::Create(
    const ExpertRebalancerOptions& options, Membership& membership,
    const metrics::ProcessMetrics& metrics) {
  DMOE_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<ExpertRebalancer>(new ExpertRebalancer(options, membership, metrics));
}

ExpertRebalancer::ExpertRebalancer(const ExpertRebalancerOptions& options, Membership& membership,
                                   const metrics::ProcessMetrics& m)
    : options_(options), membership_(membership), metrics_(m) {
  {
    absl::MutexLock lock(&tick_mu_);
    last_change_ = Now();  // the window fills first: no change before min_interval has passed
  }
  if (m.registry) {
    shard_load_ = &metrics::GaugeFamily(*m.registry, "dmoe_expert_shard_load", m.model_version);
    imbalance_ = &metrics::GaugeFamily(*m.registry, "dmoe_expert_placement_imbalance_ratio",
                                       m.model_version);
    rebalances_ =
        &metrics::CounterFamily(*m.registry, "dmoe_expert_rebalances_total", m.model_version)
             .Add({});
    moves_ = &metrics::CounterFamily(*m.registry, "dmoe_expert_moves_total", m.model_version)
                  .Add({});
    redundant_ =
        &metrics::GaugeFamily(*m.registry, "dmoe_expert_redundant_experts", m.model_version)
             .Add({});
  }
}

ExpertRebalancer::~ExpertRebalancer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void ExpertRebalancer::Start() {
  thread_ = std::thread([this] {
    absl::MutexLock lock(&mu_);
    while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.period)) {
      mu_.Unlock();
      Tick();
      mu_.Lock();
    }
  });
}

RebalanceDecision ExpertRebalancer::Tick() {
  absl::MutexLock lock(&tick_mu_);
  RebalanceDecision d;
  const BalanceSnapshot snap = membership_.Balance();
  const int64_t num_shards = static_cast<int64_t>(snap.shards.size());
  if (num_shards == 0 || !snap.complete) return d;
  const int64_t num_experts = snap.active.empty() ? 0 : static_cast<int64_t>(snap.active[0].size());
  const cluster::ExpertMap range =
      RangeExpertMap(snap.shards, num_experts, static_cast<int64_t>(snap.active.size()));
  d.active_imbalance = Imbalance(snap.active, snap.load, num_shards);
  d.range_imbalance = Imbalance(range, snap.load, num_shards);
  if (shard_load_) {
    // Share of the window's routed tokens each shard computes under the active map.
    std::vector<double> total(num_shards, 0);
    for (size_t l = 0; l < snap.active.size() && l < snap.load.size(); ++l) {
      const std::vector<double> loads = ShardLoads(snap.active[l], snap.load[l], num_shards);
      for (int64_t s = 0; s < num_shards; ++s) total[s] += loads[s];
    }
    const double sum = std::accumulate(total.begin(), total.end(), 0.0);
    std::set<std::string> labels;
    for (int64_t s = 0; s < num_shards; ++s) {
      const std::string label = absl::StrCat(snap.shards[s].first, "-", snap.shards[s].second);
      labels.insert(label);
      shard_load_->Add({{"shard", label}}).Set(sum > 0 ? total[s] / sum : 0);
    }
    for (const std::string& old : shard_labels_) {
      if (!labels.count(old)) shard_load_->Remove(&shard_load_->Add({{"shard", old}}));
    }
    shard_labels_ = labels;
    imbalance_->Add({{"map", "active"}}).Set(d.active_imbalance);
    imbalance_->Add({{"map", "range"}}).Set(d.range_imbalance);
    redundant_->Set(static_cast<double>(ExpertMoves(range, snap.active)));
  }
  const absl::Time now = Now();
  if (snap.changing || snap.window_tokens < options_.min_window_tokens ||
      d.active_imbalance <= options_.imbalance_bound ||
      now - last_change_ < options_.min_interval) {
    return d;
  }
  cluster::ExpertMap plan = PlanExpertMap(snap.load, snap.shards, options_.plan);
  d.planned_imbalance = Imbalance(plan, snap.load, num_shards);
  if (d.planned_imbalance > d.active_imbalance - options_.min_gain) return d;
  d.moves = ExpertMoves(snap.active, plan);
  absl::Status staged =
      membership_.StageExpertMap(snap.shards, std::move(plan), options_.plan.redundant_slots);
  if (!staged.ok()) {
    DMOE_LOG(WARNING) << "expert rebalance not staged: " << staged;
    return d;
  }
  d.staged = true;
  last_change_ = now;
  if (rebalances_) {
    rebalances_->Increment();
    moves_->Increment(static_cast<double>(d.moves));
  }
  DMOE_LOG(INFO) << "expert rebalance: imbalance " << d.active_imbalance << " (range map "
                 << d.range_imbalance << ") -> " << d.planned_imbalance << " planned over "
                 << snap.window_tokens << " routed tokens; " << d.moves
                 << " expert(s) to load outside their shard's range";
  return d;
}

}  // namespace dmoe::scheduler
