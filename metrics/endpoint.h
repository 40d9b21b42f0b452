// A process's Prometheus endpoint: serves its registry at http://HOST:PORT/metrics, on a port
// of its own (never the gRPC port: scrapes must work while the gRPC server is saturated).
#ifndef DMOE_METRICS_ENDPOINT_H_
#define DMOE_METRICS_ENDPOINT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace prometheus {
class Exposer;
}

namespace dmoe::metrics {

// The registry every component of one process registers into, plus the label they share.
struct ProcessMetrics {
  std::shared_ptr<prometheus::Registry> registry;
  std::string model_version;
};

// Makes a registry holding dmoe_info{role} = 1.
ProcessMetrics NewProcessMetrics(const std::string& role, const std::string& model_version);

class MetricsEndpoint {
 public:
  // `listen`: host:port; port 0 picks a free one. INVALID_ARGUMENT for a malformed address,
  // UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsEndpoint();

  // host:port actually bound (the port resolved when 0 was asked).
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
};

}  // namespace dmoe::metrics

#endif  // DMOE_METRICS_ENDPOINT_H_
