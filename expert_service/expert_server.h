// The expert shard's gRPC adapter: dmoe.v1.ExpertService over an ExpertEngine (callback API),
// plus grpc.health.v1 and server reflection. Converts proto <-> domain structs and
// absl::Status -> grpc::Status; all compute runs on the engine's worker threads, never in a
// reaction.
#ifndef DMOE_EXPERT_SERVICE_EXPERT_SERVER_H_
#define DMOE_EXPERT_SERVICE_EXPERT_SERVER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "expert_service/expert_engine.h"
#include "cluster/grpc_server.h"
#include "metrics/endpoint.h"
#include "grpcpp/channel.h"
#include "grpcpp/server.h"

namespace dmoe::expert {

// The service name registered with grpc.health.v1 (besides the overall "" status).
inline constexpr char kExpertServiceName[] = "dmoe.v1.ExpertService";

struct ExpertServerOptions {
  // host:port to listen on; port 0 picks a free port (read it back with port()).
  std::string listen_address = "127.0.0.1:0";
  // dmoe_grpc_server_handled_total; null registry: none.
  metrics::ProcessMetrics metrics{};
  // Served on the same port (e.g. NcclPairing); not owned, must outlive the server.
  std::vector<grpc::Service*> extra_services{};
  // Transport security (auth::ServerCredentials with client certificates required); null:
  // plaintext.
  std::shared_ptr<grpc::ServerCredentials> credentials = nullptr;

  // INVALID_ARGUMENT naming the field.
  absl::Status Validate() const;
};

namespace internal {
class ExpertServiceImpl;
}  // namespace internal

// Thread-safe. Serves until Shutdown (or destruction).
class ExpertServer {
 public:
  // Starts serving `engine`, which must outlive the server. UNAVAILABLE when the address
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<ExpertServer>> Create(const ExpertServerOptions& options,
                                                              ExpertEngine& engine);
  // Shutdown(absl::Now()): in-flight calls are cancelled.
  ~ExpertServer();
  ExpertServer(const ExpertServer&) = delete;
  ExpertServer& operator=(const ExpertServer&) = delete;

  // The bound port and "host:port" with it.
  int port() const { return server_.port; }
  const std::string& address() const { return server_.address; }

  // A channel to this server that bypasses the network (tests, embedded mode). Carries the
  // same message size limit as the listening port (cluster::kMaxGrpcMessageBytes).
  std::shared_ptr<grpc::Channel> InProcessChannel();

  // Graceful drain: health turns NOT_SERVING, new calls get UNAVAILABLE, in-flight and queued
  // calls run to completion until `deadline`, after which the rest are cancelled. Returns
  // when every call has finished. Idempotent; later calls return at once.
  void Shutdown(absl::Time deadline);

 private:
  ExpertServer() = default;

  std::unique_ptr<internal::ExpertServiceImpl> service_;
  cluster::GrpcServer server_;
  std::once_flag shutdown_once_;
};

}  // namespace dmoe::expert

#endif  // DMOE_EXPERT_SERVICE_EXPERT_SERVER_H_
