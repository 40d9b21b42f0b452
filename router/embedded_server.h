// One model version served over gRPC: a Scheduler behind a GenerationServer, with
// grpc.health.v1 and server reflection. Two ways to compute:
//  - in process (`dmoe serve`, ARCHITECTURE.md "embedded default"): the checkpoint runs here
//    (scheduler::InProcessModel with model::LocalExpertExecutor);
//  - cluster (`dmoe-scheduler`): forwards run on the attention replicas that register with
//    the Cluster service this server also exposes (scheduler::RemoteAttentionExecutor), and
//    those reach the expert shards that register here too.
#ifndef DMOE_ROUTER_EMBEDDED_SERVER_H_
#define DMOE_ROUTER_EMBEDDED_SERVER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/server.h"
#include "model/tokenizer.h"
#include "router/generation_server.h"
#include "metrics/endpoint.h"
#include "scheduler/cluster_metrics.h"
#include "scheduler/cluster_server.h"
#include "scheduler/in_process_model.h"
#include "scheduler/membership.h"
#include "scheduler/remote_attention_executor.h"
#include "scheduler/scheduler.h"
#include "scheduler/scheduler_metrics.h"

namespace dmoe::router {

enum class ComputeMode {
  kInProcess,  // all roles here
  kCluster,    // attention replicas and expert shards register with this server
};

struct EmbeddedServerOptions {
  std::string model_dir;
  ComputeMode compute = ComputeMode::kInProcess;
  // Cluster mode: pods heartbeat this often and drop out after `lease` without one.
  absl::Duration heartbeat_period = absl::Seconds(1);
  absl::Duration lease = absl::Seconds(10);
  // host:port to listen on; port 0 picks a free one (see EmbeddedServer::address()).
  std::string listen = "127.0.0.1:0";
  // Served model name; empty: the model directory's last path component.
  std::string model_name;
  std::string model_version;
  std::string kernels = "cpu";   // "cpu" or "reference"
  // In-process mode: where the forward runs, "cpu" or "cuda" (scheduler::InProcessModel).
  // Cluster mode computes nothing here: must be "cpu".
  std::string device = "cpu";
  int num_threads = 0;           // compute threads; <= 0: all hardware threads
  int64_t kv_page_tokens = 32;
  int64_t kv_pages = 8192;       // KV capacity in pages; bounds admission
  // Batching and queueing; start_step_thread is forced on.
  scheduler::SchedulerOptions scheduler;
  // Overrides of the decoding ids the tokenizer defines. Without a tokenizer.json they are
  // the only source: a diffusion model then needs mask_id.
  std::optional<int32_t> mask_id = std::nullopt;
  std::optional<std::vector<int32_t>> stop_ids = std::nullopt;
  // Prometheus: the registry the scheduler, the cluster view and the gRPC interceptor
  // register into (injected; tests read it). Null registry: a fresh one when metrics_listen
  // is set, otherwise no metrics.
  metrics::ProcessMetrics metrics;
  // host:port of the /metrics endpoint; empty: none.
  std::string metrics_listen;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe. Owns the model, tokenizer, scheduler, service and gRPC server.
class EmbeddedServer {
 public:
  // Loads the model and starts serving. Errors name the cause: NOT_FOUND / INVALID_ARGUMENT
  // from the checkpoint, FAILED_PRECONDITION for a diffusion model without a mask token,
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<EmbeddedServer>> Start(const EmbeddedServerOptions& options);
  // Drain(zero): requests still running end with UNAVAILABLE.
  ~EmbeddedServer();

  // The bound address with the real port, e.g. "127.0.0.1:41234".
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  const std::string& model_name() const { return model_name_; }
  // The /metrics endpoint's bound address; empty without one.
  std::string metrics_address() const { return endpoint_ ? endpoint_->address() : ""; }
  // A channel to this server that bypasses the network (tests, co-located callers).
  std::shared_ptr<grpc::Channel> InProcessChannel();

  scheduler::Scheduler& scheduler() { return *scheduler_; }
  // In-process mode on device "cpu" only.
  const model::KvCachePool& kv_pool() const { return model_->kv_pool(); }
  // Cluster mode only (null otherwise).
  scheduler::Membership* membership() { return membership_.get(); }
  GenerationServer& service() { return *service_; }
  // Null when the checkpoint has no tokenizer.json.
  const model::Tokenizer* tokenizer() const { return tokenizer_.get(); }

  // Graceful drain (Triton's GracefulStop): health turns NOT_SERVING, new generations get
  // UNAVAILABLE, requests in flight get up to `timeout` to finish, the rest end with
  // UNAVAILABLE, then the gRPC server shuts down. Blocks until done; idempotent.
  void Drain(absl::Duration timeout);

 private:
  EmbeddedServer() = default;

  std::string address_;
  int port_ = 0;
  std::string model_name_;
  metrics::ProcessMetrics metrics_;
  std::unique_ptr<metrics::MetricsEndpoint> endpoint_;
  std::unique_ptr<scheduler::SchedulerMetrics> scheduler_metrics_;
  std::unique_ptr<scheduler::InProcessModel> model_;      // in-process mode
  std::unique_ptr<model::ModelConfig> cluster_config_;    // cluster mode
  std::unique_ptr<scheduler::Membership> membership_;
  std::unique_ptr<scheduler::ClusterServer> cluster_service_;
  std::unique_ptr<scheduler::ClusterMetrics> cluster_metrics_;
  std::unique_ptr<scheduler::RemoteAttentionExecutor> remote_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  std::unique_ptr<scheduler::Scheduler> scheduler_;
  std::unique_ptr<GenerationServer> service_;
  std::unique_ptr<grpc::Server> server_;  // destroyed first: it uses everything above
  absl::Mutex drain_mu_;
  bool drained_ ABSL_GUARDED_BY(drain_mu_) = false;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_EMBEDDED_SERVER_H_
