#include "router/router_metrics.h"

#include "common/logging.h"
#include "metrics/catalog.h"

namespace dmoe::router {
namespace {

// The catalog's name and help, without the constant model_version label (see the header).
template <typename Builder>
auto& Register(Builder builder, prometheus::Registry& registry, std::string_view name,
               metrics::MetricType type) {
  const metrics::MetricSpec& spec = metrics::Spec(name);
  DMOE_CHECK(spec.type == type) << name << " is a " << metrics::TypeName(spec.type);
  return builder.Name(spec.name).Help(spec.help).Register(registry);
}

}  // namespace

RouterMetrics::RouterMetrics(prometheus::Registry& registry,
                             const std::vector<std::string>& versions)
    : requests_(Register(prometheus::BuildCounter(), registry, "dmoe_router_requests_total",
                         metrics::MetricType::kCounter)),
      duration_(Register(prometheus::BuildHistogram(), registry,
                         "dmoe_router_request_duration_seconds",
                         metrics::MetricType::kHistogram)),
      weight_(Register(prometheus::BuildGauge(), registry, "dmoe_canary_weight_percent",
                       metrics::MetricType::kGauge)),
      rollbacks_(Register(prometheus::BuildCounter(), registry, "dmoe_canary_rollbacks_total",
                          metrics::MetricType::kCounter)),
      reattaches_(Register(prometheus::BuildCounter(), registry, "dmoe_router_reattaches_total",
                           metrics::MetricType::kCounter)) {
  const prometheus::Histogram::BucketBoundaries buckets =
      metrics::Spec("dmoe_router_request_duration_seconds").buckets;
  for (const std::string& v : versions) {
    duration_by_version_[v] = &duration_.Add({{"model_version", v}}, buckets);
    weight_by_version_[v] = &weight_.Add({{"model_version", v}});
    rollbacks_by_version_[v] = &rollbacks_.Add({{"model_version", v}});
    reattaches_by_version_[v] = &reattaches_.Add({{"model_version", v}});
  }
}

void RouterMetrics::RecordCall(const std::string& version, absl::StatusCode code,
                               absl::Duration duration) {
  // Family::Add returns the existing series for known labels (and is thread-safe).
  requests_.Add({{"model_version", version}, {"grpc_code", absl::StatusCodeToString(code)}})
      .Increment();
  auto it = duration_by_version_.find(version);
  if (it != duration_by_version_.end()) it->second->Observe(absl::ToDoubleSeconds(duration));
}

void RouterMetrics::PublishSplit(const SplitSnapshot& split) {
  for (const VersionState& v : split.versions) {
    auto it = weight_by_version_.find(v.version);
    if (it != weight_by_version_.end()) it->second->Set(v.percent);
  }
}

void RouterMetrics::RecordRollback(const std::string& version) {
  auto it = rollbacks_by_version_.find(version);
  if (it != rollbacks_by_version_.end()) it->second->Increment();
}

void RouterMetrics::RecordReattach(const std::string& version) {
  auto it = reattaches_by_version_.find(version);
  if (it != reattaches_by_version_.end()) it->second->Increment();
}

}  // namespace dmoe::router
