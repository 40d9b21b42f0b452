// The router role (dmoe-router): the public dmoe.v1.Generation API in front of one scheduler
// per model version. Every call is forwarded, with the caller's deadline and cancellation,
// to the version TrafficSplit picks (weights, sticky client keys, an explicit model.version),
// and its outcome feeds the canary rollback policy and the router's metrics. The same object
// owns the RouterAdmin service (router/router_admin_service.h) that changes the split live.
// docs/canary.md describes the rollout as a whole.
#ifndef DMOE_ROUTER_GENERATION_PROXY_H_
#define DMOE_ROUTER_GENERATION_PROXY_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth/api_keys.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/registry.h"
#include "proto/dmoe/v1/generation.grpc.pb.h"
#include "router/canary_policy.h"
#include "router/router_admin_service.h"
#include "router/router_metrics.h"
#include "router/stream_relay.h"
#include "router/traffic_split.h"

namespace dmoe::router {

// gRPC metadata key naming the caller for sticky version routing; GenerateRequest.client_key
// is used when the metadata is absent.
inline constexpr char kClientKeyMetadata[] = "dmoe-client-key";

struct VersionBackend {
  std::string version;  // the name calls select with model.version and metrics carry
  std::string address;  // that version's scheduler, host:port
};

struct GenerationProxyOptions {
  // One per model version, in declaration order (the order of the sticky buckets).
  // Non-empty; versions distinct and non-empty; addresses non-empty.
  std::vector<VersionBackend> backends = {};
  // Initial weights (TrafficSplitOptions::weights); empty: 100 to the first version.
  std::vector<VersionWeight> split = {};
  // Rollback target; empty: the first version.
  std::string stable = "";
  CanaryPolicyOptions rollback = {};
  // Where the router's series go (router/router_metrics.h); null: no metrics.
  std::shared_ptr<prometheus::Registry> registry = nullptr;
  // Time source of the rollback windows (tests); null: absl::Now. Call durations are always
  // measured on the real clock.
  std::function<absl::Time()> clock = nullptr;
  // ListModels asks every backend; this bounds the wait when the caller set no deadline
  // (a stopped backend must not hang model discovery). > 0.
  absl::Duration list_models_timeout = absl::Seconds(5);
  // A scheduler lost in the middle of a stream (UNAVAILABLE after its first event) is called
  // again with the same request id (the router makes one up when the caller gave none) and
  // the offset the caller has (router/stream_relay.h): callers see no error when a journalling
  // scheduler restarts. timeout zero: off.
  ReattachOptions reattach = {};
  // API keys (docs/security.md): every Generation call needs a key, RouterAdmin an admin key.
  // Not owned; must outlive the proxy. Null: no authentication.
  auth::ApiKeys* api_keys = nullptr;
  // What the router presents to its schedulers (mutual TLS, common/auth/tls.h); null:
  // plaintext.
  std::shared_ptr<grpc::ChannelCredentials> backend_credentials = nullptr;
  // With backend_credentials: check the schedulers' certificates as this name (--tls-server-name).
  std::string backend_server_name = "";

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

// Thread-safe. Must outlive the grpc::Server its services are registered with.
class GenerationProxy final : public dmoe::v1::Generation::CallbackService {
 public:
  static absl::StatusOr<std::unique_ptr<GenerationProxy>> Create(
      const GenerationProxyOptions& options);

  // Generate / GenerateStream / Tokenize: forwarded to the picked version, whose name the
  // response's model.version (final event's, for streams) then carries; INVALID_ARGUMENT
  // naming model.version for a version the router does not serve. Every call is relayed on
  // gRPC's callback threads, none on a thread of its own: a stream costs the router one
  // buffered event and two reactors, so thousands can be open at once (docs/bench/router.md).
  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const dmoe::v1::GenerateRequest* request,
                                     dmoe::v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<dmoe::v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const dmoe::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const dmoe::v1::TokenizeRequest* request,
                                     dmoe::v1::TokenizeResponse* response) override;
  // Every reachable version's models, each with version = the router's version name and
  // its traffic_percent and stable flag; the first error when no backend answers.
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dmoe::v1::ListModelsRequest* request,
                                       dmoe::v1::ListModelsResponse* response) override;

  // The RouterAdmin service over this proxy's split; register it on the same server.
  RouterAdminService& admin_service() { return *admin_; }
  TrafficSplit& split() { return *split_; }

 private:
  struct Backend {
    std::string address;
    std::unique_ptr<dmoe::v1::Generation::Stub> stub;
  };

  GenerationProxy() = default;
  // Metrics and the rollback policy, once per finished call.
  void OnCallDone(const std::string& version, absl::Time start, const grpc::Status& status);
  template <typename Request, typename Response, typename AsyncCall>
  grpc::ServerUnaryReactor* ForwardUnary(grpc::CallbackServerContext* context,
                                         const Request* request, Response* response,
                                         auth::CallKind kind, AsyncCall&& call);

  GenerationProxyOptions options_;
  std::map<std::string, Backend> backends_;  // by version; read-only after Create
  std::unique_ptr<TrafficSplit> split_;
  std::unique_ptr<RouterMetrics> metrics_;  // null without a registry
  std::unique_ptr<RouterAdminService> admin_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_GENERATION_PROXY_H_
