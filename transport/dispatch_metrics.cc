#include "transport/dispatch_metrics.h"

#include <algorithm>

#include "metrics/catalog.h"

namespace dmoe::transport {

DispatchMetrics::DispatchMetrics(const metrics::ProcessMetrics& m, int64_t num_experts)
    : metrics_(m),
      num_experts_(num_experts),
      tokens_(metrics::CounterFamily(*m.registry, "dmoe_expert_tokens_total", m.model_version)),
      imbalance_(
          metrics::GaugeFamily(*m.registry, "dmoe_expert_imbalance_ratio", m.model_version)),
      dispatch_(
          metrics::HistogramFamily(*m.registry, "dmoe_expert_dispatch_seconds", m.model_version)),
      combine_(metrics::AddHistogram(
          metrics::HistogramFamily(*m.registry, "dmoe_expert_combine_seconds", m.model_version),
          "dmoe_expert_combine_seconds")) {}

prometheus::Counter& DispatchMetrics::ExpertCounter(int64_t layer, int64_t expert) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(counters_.size()) <= layer) counters_.resize(layer + 1);
  std::vector<prometheus::Counter*>& row = counters_[layer];
  if (row.empty()) row.assign(num_experts_, nullptr);
  if (!row[expert]) {
    row[expert] = &tokens_.Add(
        {{"layer", std::to_string(layer)}, {"expert", std::to_string(expert)}});
  }
  return *row[expert];
}

void DispatchMetrics::RecordRouting(int64_t layer, const std::vector<int32_t>& experts) {
  if (experts.empty()) return;
  std::vector<int64_t> counts(num_experts_, 0);
  for (int32_t e : experts) {
    if (e >= 0 && e < num_experts_) ++counts[e];
  }
  int64_t max = 0;
  for (int64_t e = 0; e < num_experts_; ++e) {
    if (counts[e] == 0) continue;
    ExpertCounter(layer, e).Increment(static_cast<double>(counts[e]));
    max = std::max(max, counts[e]);
  }
  const double mean = static_cast<double>(experts.size()) / static_cast<double>(num_experts_);
  imbalance_.Add({{"layer", std::to_string(layer)}}).Set(static_cast<double>(max) / mean);
}

void DispatchMetrics::RecordDispatch(const std::string& shard, double seconds) {
  metrics::AddHistogram(dispatch_, "dmoe_expert_dispatch_seconds", {{"shard", shard}})
      .Observe(seconds);
}

void DispatchMetrics::RecordCombine(double seconds) { combine_.Observe(seconds); }

}  // namespace dmoe::transport
