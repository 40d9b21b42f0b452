// Every Prometheus series dmoe exports, in one table: name, type, help, labels, buckets.
// Components register their families through these helpers, so a name that is not in the
// catalog cannot be exported, and docs/metrics.md, the dashboards, the rules and the
// autoscaler configs are checked against `dmoe metrics list` (tests/deploy).
//
// Conventions (ANCHORS.md §3.4): the `dmoe_` prefix, vLLM / SGLang meanings (time to first
// *block* is TTFT for a model that commits a block at a time), base units (seconds, ratios in
// [0, 1]), `_total` for counters. Every family carries the constant label `model_version`.
#ifndef DMOE_METRICS_CATALOG_H_
#define DMOE_METRICS_CATALOG_H_

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace dmoe::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

struct MetricSpec {
  std::string name;
  MetricType type;
  std::string role;                  // the process kind that exports it (docs and tests)
  std::string help;
  std::vector<std::string> labels;   // variable labels, besides model_version
  std::vector<double> buckets;       // histograms only
};

// The whole catalog, in documentation order.
const std::vector<MetricSpec>& Catalog();
// The spec of `name`; aborts for a name not in the catalog (a programming error).
const MetricSpec& Spec(std::string_view name);
std::string_view TypeName(MetricType type);

// The family `name` in `registry`, with help from the catalog and the constant label
// model_version. Aborts when `name` is not in the catalog or has another type.
prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& registry,
                                                       std::string_view name,
                                                       const std::string& model_version);
prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry,
                                                   std::string_view name,
                                                   const std::string& model_version);
prometheus::Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& registry,
                                                           std::string_view name,
                                                           const std::string& model_version);
// A label-less histogram with the catalog's buckets.
prometheus::Histogram& AddHistogram(prometheus::Family<prometheus::Histogram>& family,
                                    std::string_view name,
                                    const std::map<std::string, std::string>& labels = {});

}  // namespace dmoe::metrics

#endif  // DMOE_METRICS_CATALOG_H_
