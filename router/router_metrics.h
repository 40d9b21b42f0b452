// The router's Prometheus series (metrics/catalog.cc, "Router" section):
//   dmoe_router_requests_total{model_version, grpc_code}
//   dmoe_router_request_duration_seconds{model_version}
//   dmoe_canary_weight_percent{model_version}
//   dmoe_canary_rollbacks_total{model_version}
//   dmoe_router_reattaches_total{model_version}
// model_version is the version that served the call (or whose weight / rollback it is). A
// router serves several versions from one registry, and prometheus-cpp keeps one family per
// name, so unlike the other roles model_version is a variable label here rather than the
// family's constant label; the exposition text is the same.
#ifndef DMOE_ROUTER_ROUTER_METRICS_H_
#define DMOE_ROUTER_ROUTER_METRICS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "router/traffic_split.h"

namespace dmoe::router {

// Thread-safe. Registers its families in `registry` at construction; `registry` must
// outlive this object.
class RouterMetrics {
 public:
  RouterMetrics(prometheus::Registry& registry, const std::vector<std::string>& versions);

  // One forwarded call that `version` served, its final code and duration.
  void RecordCall(const std::string& version, absl::StatusCode code, absl::Duration duration);
  // Sets dmoe_canary_weight_percent of every version.
  void PublishSplit(const SplitSnapshot& split);
  void RecordRollback(const std::string& version);
  // One re-attach try after a lost scheduler stream (router/stream_relay.h).
  void RecordReattach(const std::string& version);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Gauge>& weight_;
  prometheus::Family<prometheus::Counter>& rollbacks_;
  prometheus::Family<prometheus::Counter>& reattaches_;
  // Created up front, one per declared version: the maps are read-only afterwards.
  std::map<std::string, prometheus::Histogram*> duration_by_version_;
  std::map<std::string, prometheus::Gauge*> weight_by_version_;
  std::map<std::string, prometheus::Counter*> rollbacks_by_version_;
  std::map<std::string, prometheus::Counter*> reattaches_by_version_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_ROUTER_METRICS_H_
