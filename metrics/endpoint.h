// A process's Prometheus endpoint: serves its registry at http://HOST:PORT/metrics, on a port
// of its own (never the gRPC port: scrapes must work while the gRPC server is saturated).
//
// A deliberately small HTTP/1.1 server (GET /metrics, one connection at a time, Connection:
// close) instead of prometheus-cpp's civetweb Exposer: civetweb starts its threads with a fixed
// ~100 KB stack, and a process that links cuBLAS has more static TLS than that, so the Exposer
// failed in every CUDA build (pthread_create EINVAL). Serialisation is prometheus-cpp's.
#ifndef DMOE_METRICS_ENDPOINT_H_
#define DMOE_METRICS_ENDPOINT_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace dmoe::metrics {

// The registry every component of one process registers into, plus the label they share.
struct ProcessMetrics {
  std::shared_ptr<prometheus::Registry> registry{};
  std::string model_version{};
};

// Makes a registry holding dmoe_info{role} = 1.
ProcessMetrics NewProcessMetrics(const std::string& role, const std::string& model_version);

// The process's gRPC server is up and serving (cluster::StartGrpcServer marks it; a shutdown
// signal, which starts the drain, unmarks it): GET /health answers 200 while marked, 503
// otherwise. Kubelet's gRPC probes speak
// plaintext only, so on a TLS port this plaintext /health is what Kubernetes probes.
void MarkServing(bool serving);

class MetricsEndpoint {
 public:
  // `listen`: IPv4 host:port (0.0.0.0 for every interface); port 0 picks a free one.
  // INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsEndpoint();

  // host:port actually bound (the port resolved when 0 was asked).
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint() = default;
  void Serve();
  void Answer(int connection);

  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// What a role binary's --metrics-listen starts: the process registry and its endpoint, logging
// "metrics on http://ADDR/metrics" (the line `dmoe cluster up` reads). An empty `listen` gives
// no registry and no endpoint (every component then skips its metrics). `injected` (tests,
// embedders): its registry is used instead of a new one, and kept even without an endpoint.
struct ServedMetrics {
  ProcessMetrics metrics;
  std::unique_ptr<MetricsEndpoint> endpoint;
};
absl::StatusOr<ServedMetrics> ServeProcessMetrics(const std::string& role,
                                                  const std::string& model_version,
                                                  const std::string& listen,
                                                  const ProcessMetrics& injected = {});

}  // namespace dmoe::metrics

#endif  // DMOE_METRICS_ENDPOINT_H_
