// `dmoe serve`: one model version with every role in this process (ARCHITECTURE.md "embedded
// default"). The checkpoint runs here (InProcessModel: the attention engine with
// model::LocalExpertExecutor on the CPU, or the whole forward on one GPU) behind the same
// public API the scheduler process serves (scheduler::GenerationEndpoint).
#ifndef DMOE_SERVE_EMBEDDED_SERVER_H_
#define DMOE_SERVE_EMBEDDED_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "metrics/endpoint.h"
#include "model/kv_cache.h"
#include "scheduler/generation_endpoint.h"
#include "serve/in_process_model.h"

namespace dmoe::serve {

struct EmbeddedServerOptions {
  // The public API: model directory, address, batching, decoding ids, metrics.
  scheduler::GenerationEndpointOptions api{};
  std::string kernels = "cpu";   // "cpu" or "reference"
  // Where the forward runs, "cpu" or "cuda" (InProcessModel).
  std::string device = "cpu";
  // `--gpu`: index into the visible CUDA devices (common/gpu_index.h); device "cuda" only.
  int cuda_device = 0;
  int num_threads = 0;           // compute threads; <= 0: all hardware threads

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe. Owns the model and the public API server.
class EmbeddedServer {
 public:
  // Loads the model and starts serving. Errors name the cause: NOT_FOUND / INVALID_ARGUMENT
  // from the checkpoint, FAILED_PRECONDITION for a diffusion model without a mask token,
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<EmbeddedServer>> Start(const EmbeddedServerOptions& options);

  // The bound address with the real port, e.g. "127.0.0.1:41234".
  const std::string& address() const { return api_->address(); }
  int port() const { return api_->port(); }
  const std::string& model_name() const { return api_->model_name(); }
  // The /metrics endpoint's bound address; empty without one.
  std::string metrics_address() const {
    return metrics_.endpoint ? metrics_.endpoint->address() : "";
  }
  // The OpenAI-compatible HTTP API's bound address; empty without api.http_listen.
  std::string http_address() const { return api_->http_address(); }
  // A channel to this server that bypasses the network (tests, co-located callers).
  std::shared_ptr<grpc::Channel> InProcessChannel() { return api_->InProcessChannel(); }

  scheduler::Scheduler& scheduler() { return api_->scheduler(); }
  scheduler::GenerationServer& service() { return api_->service(); }
  const model::Tokenizer* tokenizer() const { return api_->tokenizer(); }
  // Device "cpu" only.
  const model::KvCachePool& kv_pool() const { return model_->kv_pool(); }

  // scheduler::GenerationEndpoint::Drain.
  void Drain(absl::Duration timeout) { api_->Drain(timeout); }

 private:
  EmbeddedServer() = default;

  metrics::ServedMetrics metrics_;
  std::unique_ptr<InProcessModel> model_;
  std::unique_ptr<scheduler::GenerationEndpoint> api_;  // destroyed first: it uses the model
};

}  // namespace dmoe::serve

#endif  // DMOE_SERVE_EMBEDDED_SERVER_H_
