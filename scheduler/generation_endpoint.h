// One model version's public API over a StepExecutor: a Scheduler (continuous batching, the
// denoising policy), the dmoe.v1.Generation service over it (tokenizer and decoding ids from
// the checkpoint directory) and the gRPC server that serves both, plus any other services of
// the process. Where the forwards run is the caller's: the scheduler process passes its
// remote attention replicas (scheduler_server.h), `dmoe serve` an in-process model
// (serve/embedded_server.h).
#ifndef DMOE_SCHEDULER_GENERATION_ENDPOINT_H_
#define DMOE_SCHEDULER_GENERATION_ENDPOINT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cluster/grpc_server.h"
#include "common/auth/api_keys.h"
#include "common/auth/tls.h"
#include "grpcpp/channel.h"
#include "http/openai_server.h"
#include "metrics/endpoint.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "scheduler/generation_server.h"
#include "scheduler/request_journal.h"
#include "scheduler/scheduler.h"
#include "scheduler/scheduler_metrics.h"
#include "scheduler/step_executor.h"

namespace dmoe::scheduler {

struct GenerationEndpointOptions {
  // Checkpoint directory: tokenizer.json (when present) and the default model name.
  std::string model_dir;
  // host:port to listen on; port 0 picks a free one (see address()).
  std::string listen = "127.0.0.1:0";
  // Served model name; empty: the model directory's last path component.
  std::string model_name{};
  std::string model_version{};
  int64_t kv_page_tokens = 32;
  int64_t kv_pages = 8192;       // KV capacity in pages; bounds admission
  // Batching and queueing; start_step_thread is forced on.
  SchedulerOptions scheduler{};
  // Overrides of the decoding ids the tokenizer defines. Without a tokenizer.json they are
  // the only source: a diffusion model then needs mask_id.
  std::optional<int32_t> mask_id = std::nullopt;
  std::optional<std::vector<int32_t>> stop_ids = std::nullopt;
  // Prometheus: the registry the scheduler, the cluster view and the gRPC interceptor
  // register into (injected; tests read it). Null registry: a fresh one when metrics_listen
  // is set, otherwise no metrics.
  metrics::ProcessMetrics metrics{};
  // host:port of the /metrics endpoint; empty: none.
  std::string metrics_listen{};
  // host:port of the OpenAI-compatible HTTP API (http/openai_server.h); empty: none.
  std::string http_listen{};
  // API keys file (common/auth/api_keys.h, docs/security.md) every Generation call must
  // present a key of; re-read when it changes. Empty: no authentication (logged).
  std::string api_keys_file{};
  // TLS of the gRPC port (docs/security.md); none set: plaintext. A port that also hosts the
  // caller's extra services (the scheduler's Cluster service, which pods register with) is an
  // internal port: it then requires a client certificate signed by tls.ca_file (mutual TLS);
  // `dmoe serve`'s port asks for none (callers authenticate with API keys).
  auth::TlsOptions tls{};
  // The scheduler journal (scheduler/request_journal.h, docs/operations.md); an empty path:
  // none. With one, Start resumes the journal's unfinished requests and calls re-attach to a
  // request by its request_id (SchedulerOptions::journal).
  RequestJournalOptions journal{};

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe. Owns the tokenizer, scheduler, service and gRPC server; the executor and the
// extra services are the caller's and must outlive this object.
class GenerationEndpoint {
 public:
  // Starts serving. `metrics` is the process's (see metrics::ServeProcessMetrics). Errors:
  // FAILED_PRECONDITION for a diffusion model without a mask token, UNAVAILABLE when the
  // address cannot be bound, the tokenizer's and the scheduler's errors.
  static absl::StatusOr<std::unique_ptr<GenerationEndpoint>> Start(
      const GenerationEndpointOptions& options, const metrics::ProcessMetrics& metrics,
      const model::ModelConfig& config, StepExecutor& executor,
      const std::vector<grpc::Service*>& extra_services = {});
  // Drain(zero): requests still running end with UNAVAILABLE.
  ~GenerationEndpoint();

  // The bound address with the real port, e.g. "127.0.0.1:41234".
  const std::string& address() const { return server_.address; }
  // The OpenAI-compatible HTTP API's "HOST:PORT"; empty without http_listen.
  std::string http_address() const { return http_ ? http_->address() : std::string(); }
  int port() const { return server_.port; }
  const std::string& model_name() const { return model_name_; }
  // A channel to this server that bypasses the network (tests, co-located callers).
  std::shared_ptr<grpc::Channel> InProcessChannel();
  Scheduler& scheduler() { return *scheduler_; }
  GenerationServer& service() { return *service_; }
  // Null when the checkpoint has no tokenizer.json.
  const model::Tokenizer* tokenizer() const { return tokenizer_.get(); }

  // Graceful drain (Triton's GracefulStop): health turns NOT_SERVING, new generations get
  // UNAVAILABLE, requests in flight get up to `timeout` to finish, the rest end with
  // UNAVAILABLE, then the gRPC server shuts down. Blocks until done; idempotent.
  void Drain(absl::Duration timeout);

 private:
  GenerationEndpoint() = default;

  std::string model_name_;
  std::unique_ptr<auth::ApiKeys> api_keys_;  // null: no authentication
  std::unique_ptr<SchedulerMetrics> scheduler_metrics_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  std::unique_ptr<RequestJournal> journal_;  // outlives the scheduler, which appends to it
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<GenerationServer> service_;
  cluster::GrpcServer server_;  // destroyed after http_, before everything above
  std::unique_ptr<http::OpenAiServer> http_;  // destroyed first: it calls server_
  absl::Mutex drain_mu_;
  bool drained_ ABSL_GUARDED_BY(drain_mu_) = false;
};

}  // namespace dmoe::scheduler

#endif  // DMOE_SCHEDULER_GENERATION_ENDPOINT_H_
