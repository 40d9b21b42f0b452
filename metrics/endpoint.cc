#include "metrics/endpoint.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "metrics/catalog.h"
#include "prometheus/exposer.h"

namespace dmoe::metrics {

ProcessMetrics NewProcessMetrics(const std::string& role, const std::string& model_version) {
  ProcessMetrics m{std::make_shared<prometheus::Registry>(), model_version};
  GaugeFamily(*m.registry, "dmoe_info", model_version).Add({{"role", role}}).Set(1);
  return m;
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen, std::shared_ptr<prometheus::Registry> registry) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address '", listen, "' is not host:port"));
  }
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  try {
    // One civetweb thread is plenty for a scrape every few seconds.
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(listen, 1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  endpoint->exposer_->RegisterCollectable(registry);
  const std::vector<int> ports = endpoint->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen));
  }
  endpoint->address_ = absl::StrCat(listen.substr(0, colon), ":", ports[0]);
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() = default;

}  // namespace dmoe::metrics
