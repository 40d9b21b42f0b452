#include "scheduler/cluster_metrics.h"

#include "absl/strings/str_cat.h"
#include "metrics/catalog.h"

namespace dmoe::scheduler {

ClusterMetrics::ClusterMetrics(const metrics::ProcessMetrics& m, Membership& membership,
                               absl::Duration period)
    : metrics_(m),
      membership_(membership),
      members_(metrics::GaugeFamily(*m.registry, "dmoe_cluster_members", m.model_version)),
      placement_version_(
          metrics::GaugeFamily(*m.registry, "dmoe_expert_placement_version", m.model_version)
              .Add({})),
      placement_changes_(metrics::CounterFamily(*m.registry,
                                                "dmoe_expert_placement_changes_total",
                                                m.model_version)
                             .Add({})),
      replicas_(metrics::GaugeFamily(*m.registry, "dmoe_expert_shard_replicas", m.model_version)),
      busy_(metrics::GaugeFamily(*m.registry, "dmoe_expert_shard_busy_ratio", m.model_version)),
      desired_(metrics::GaugeFamily(*m.registry, "dmoe_expert_shard_desired_replicas",
                                    m.model_version)) {
  Refresh();
  thread_ = std::thread([this, period] {
    absl::MutexLock lock(&mu_);
    while (!mu_.AwaitWithTimeout(absl::Condition(&stop_), period)) {
      mu_.Unlock();
      Refresh();
      mu_.Lock();
    }
  });
}

ClusterMetrics::~ClusterMetrics() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void ClusterMetrics::Refresh() {
  int64_t attention = 0, experts = 0;
  for (const MemberView& m : membership_.Members()) {
    (m.pod.role == PodRole::kExpert ? experts : attention) += 1;
  }
  members_.Add({{"role", "attention"}}).Set(static_cast<double>(attention));
  members_.Add({{"role", "expert"}}).Set(static_cast<double>(experts));

  const uint64_t version = membership_.placement_version();
  if (version > last_version_) {
    // The first refresh counts the versions published before metrics existed too.
    placement_changes_.Increment(static_cast<double>(version - last_version_));
    last_version_ = version;
  }
  placement_version_.Set(static_cast<double>(version));

  std::set<std::string> now;
  for (const ShardStatus& s : membership_.ShardStatuses()) {
    const std::string shard = absl::StrCat(s.expert_first, "-", s.expert_last);
    now.insert(shard);
    replicas_.Add({{"shard", shard}}).Set(static_cast<double>(s.replicas));
    busy_.Add({{"shard", shard}}).Set(s.busy_ratio);
    desired_.Add({{"shard", shard}}).Set(static_cast<double>(s.desired_replicas));
  }
  // A shard whose last replica left reports 0 replicas (alerts fire on it) but keeps its
  // desired count, so the HPA can scale it back up.
  for (const std::string& shard : shards_) {
    if (!now.count(shard)) replicas_.Add({{"shard", shard}}).Set(0);
  }
  shards_.insert(now.begin(), now.end());
}

}  // namespace dmoe::scheduler
