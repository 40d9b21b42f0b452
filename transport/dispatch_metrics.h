// Prometheus series of the attention side of the expert data plane (metrics/catalog.cc, role
// "attention"): tokens routed per expert and layer, the per-layer load imbalance, dispatch
// latency per shard and the combine. Shared by every lane's executor; thread-safe.
#ifndef DMOE_TRANSPORT_DISPATCH_METRICS_H_
#define DMOE_TRANSPORT_DISPATCH_METRICS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "metrics/endpoint.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"

namespace dmoe::transport {

class DispatchMetrics {
 public:
  DispatchMetrics(const metrics::ProcessMetrics& metrics, int64_t num_experts);

  // One layer's routing: `experts` holds the chosen expert of every (token, slot).
  void RecordRouting(int64_t layer, const std::vector<int32_t>& experts);
  // One shard's call for one layer (shard = "first-last").
  void RecordDispatch(const std::string& shard, double seconds);
  void RecordCombine(double seconds);

 private:
  prometheus::Counter& ExpertCounter(int64_t layer, int64_t expert) ABSL_LOCKS_EXCLUDED(mu_);

  metrics::ProcessMetrics metrics_;
  int64_t num_experts_;
  prometheus::Family<prometheus::Counter>& tokens_;
  prometheus::Family<prometheus::Gauge>& imbalance_;
  prometheus::Family<prometheus::Histogram>& dispatch_;
  prometheus::Histogram& combine_;
  absl::Mutex mu_;
  std::vector<std::vector<prometheus::Counter*>> counters_  // [layer][expert], lazily
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dmoe::transport

#endif  // DMOE_TRANSPORT_DISPATCH_METRICS_H_
